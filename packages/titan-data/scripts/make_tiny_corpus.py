"""Write assets/tiny.jsonl: the small fixed corpus for reproducible tests (text written for Titan).

Run once; the output is committed. Prose, code, tables, unicode and whitespace-heavy documents so
tests exercise every kind of input the tokenizer and the packer meet.
"""

import json
import pathlib

PROSE = [
    "The river rose in the night, and by morning the lower field was a shallow lake. The farmer walked its edge with a lantern, counting the fence posts that still showed above the water.",
    "A lighthouse keeper kept two logs: one for the weather and one for the ships. In forty years the second log never ran out of pages, and the first never ran out of rain.",
    "Bread needs four things: flour, water, salt and time. Most failed loaves lack the last one.",
    "The committee met on Tuesday. It agreed to meet again on Thursday to decide whether Tuesday's meeting had been necessary.",
    "When the snow melts the paths reappear in the same places every spring, worn by feet that do not remember walking them.",
    "She repaired clocks for a living and never wore a watch. Time, she said, was something other people kept for her.",
    "A map is a promise that the ground will agree with the paper. Sailors learned to trust the ground.",
    "The library closed at nine, but the reading room lamps stayed on until the last student left, usually near midnight.",
    "Every bridge in the town was named after the person who had complained loudest about the river before it was built.",
    "Tomatoes ripen faster beside bananas. Nobody in the village believed this until the grocer proved it with two baskets and a week of patience.",
    "The old road followed the contour of the hill. The new road went straight through it, and took three years longer to build.",
    "Owls do not hoot to frighten mice. They hoot to tell other owls where the good trees are.",
]

CODE = [
    "def fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nprint([fib(i) for i in range(10)])\n",
    "#include <stdio.h>\n\nint main(void) {\n\tfor (int i = 0; i < 3; ++i) {\n\t\tprintf(\"%d\\n\", i * i);\n\t}\n\treturn 0;\n}\n",
    "SELECT name, COUNT(*) AS n\n  FROM orders\n WHERE placed_at >= '2024-01-01'\n GROUP BY name\nHAVING n > 10\n ORDER BY n DESC;\n",
    "class Stack:\n    \"\"\"LIFO container.\"\"\"\n\n    def __init__(self):\n        self._items = []\n\n    def push(self, x):\n        self._items.append(x)\n\n    def pop(self):\n        return self._items.pop()\n",
    "fn main() {\n    let words = vec![\"alpha\", \"beta\", \"gamma\"];\n    for (i, w) in words.iter().enumerate() {\n        println!(\"{i}: {w}\");\n    }\n}\n",
]

UNICODE = [
    "Café, naïve, façade, jalapeño, Größe, smørrebrød, żółć, Ærøskøbing.",
    "日本語の文章も扱えます。東京は晴れ、大阪は雨でした。",
    "Русский текст: съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Emoji and symbols: 🚀 ✨ 🧪 → ≤ ≥ ≠ ∞ ∑ √ π € £ ¥ ©.",
    "Ελληνικά: η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
    "עברית ו-العربية: right-to-left scripts mixed with left-to-right text.",
]

WHITESPACE = [
    "   leading spaces\n\n\n\ttabs\t\tbetween\t\twords   \n\n   trailing   \n",
    "col1    col2    col3\n1       2       3\n10      20      30\n100     200     300\n",
    "\n\n\n\n",
    "a\r\nwindows\r\nline\r\nendings\r\n",
]

SPECIAL = [
    "A document that mentions <|begin_of_text|> and <|end_of_text|> and <|eot_id|> as plain text.",
    "Chat markup like <|start_header_id|>user<|end_header_id|> must not become control tokens.",
]


def tables() -> list[str]:
    docs = []
    for n in range(2, 10):
        docs.append("\n".join(f"{n} x {k} = {n * k}" for k in range(1, 13)) + "\n")
    return docs


def main() -> None:
    docs = PROSE + CODE + UNICODE + WHITESPACE + SPECIAL + tables()
    # Interleave kinds so that every split and every shard sees a mix.
    docs = [docs[(i * 7) % len(docs)] for i in range(len(docs))] if len(docs) % 7 else docs
    out = pathlib.Path(__file__).resolve().parents[1] / "src" / "titan_data" / "assets" / "tiny.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
    print(f"wrote {len(docs)} documents to {out}")


if __name__ == "__main__":
    main()
