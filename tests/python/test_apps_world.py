"""The application-layer example's world (examples/apps/world.py) and scoring (run.py): the same
seed gives the same bytes, held-out problems share no name, template or start number with
training, prompts are the template files verbatim, a name's search finds its own document, and
the Wilson interval and answer normalisation give the known values."""
import json
import os
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples", "apps"))
import run  # noqa: E402
import world  # noqa: E402


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


class WorldTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.a = os.path.join(cls.tmp.name, "a")
        cls.b = os.path.join(cls.tmp.name, "b")
        world.build(cls.a, seed=3, quick=True)
        world.build(cls.b, seed=3, quick=True)

    def test_same_seed_same_bytes(self):
        for name in ["docs.jsonl", "sft_train.jsonl", "heldout_arith.jsonl", "heldout_two.jsonl"]:
            self.assertEqual(read(os.path.join(self.a, name)), read(os.path.join(self.b, name)), name)

    def test_heldout_names_never_in_training(self):
        train = read(os.path.join(self.a, "sft_train.jsonl")) + read(os.path.join(self.a, "docs_train.jsonl"))
        docs = [json.loads(line) for line in read(os.path.join(self.a, "docs.jsonl")).splitlines()]
        train_ids = {json.loads(line)["id"] for line in read(os.path.join(self.a, "docs_train.jsonl")).splitlines()}
        held_names = {d["text"].split(" is ")[0] for d in docs if d["id"] not in train_ids}
        self.assertGreater(len(held_names), 10)
        for name in held_names:
            self.assertNotIn(name, train)

    def test_disjointness_check_catches_a_leak(self):
        # The check world.build runs must fail when a held-out problem's template is a training one.
        saved = world.SINGLE_TEMPLATES["heldout"]["age"]
        world.SINGLE_TEMPLATES["heldout"]["age"] = world.SINGLE_TEMPLATES["train"]["age"]
        try:
            with self.assertRaises(AssertionError):
                world.build(os.path.join(self.tmp.name, "leak"), seed=3, quick=True)
        finally:
            world.SINGLE_TEMPLATES["heldout"]["age"] = saved

    def test_heldout_arithmetic_starts_in_the_heldout_range(self):
        for line in read(os.path.join(self.a, "heldout_arith.jsonl")).splitlines():
            q = json.loads(line)["question"]
            start = int(q.split(" starts with ")[1].split()[0])
            self.assertTrue(900 <= start <= 999, q)

    def test_prompts_are_the_templates_verbatim(self):
        templates = world.load_templates()
        heads = {name: t.split("{")[0] for name, t in templates.items()}
        tails = {name: t.split("}")[-1] for name, t in templates.items() if name != "react"}
        seen = set()
        for line in read(os.path.join(self.a, "sft_train.jsonl")).splitlines():
            ex = json.loads(line)
            for name, head in heads.items():
                if ex["prompt"].startswith(head) and (name == "react" or ex["prompt"].endswith(tails[name])):
                    seen.add(name)
        self.assertEqual(seen, set(templates))

    def test_search_finds_each_entity_document(self):
        docs = [json.loads(line) for line in read(os.path.join(self.a, "docs.jsonl")).splitlines()]
        bm25 = world.Bm25(docs)
        for d in docs[:50]:
            name = d["text"].split(" is ")[0]
            self.assertEqual(world.search_observation(bm25, name), f"[{d['id']}#0] {d['text']}")

    def test_pal_programs_compute_the_answer(self):
        # The programs use Lua's syntax for integer division (//), the one operator Python spells the same.
        import random
        rng = random.Random(0)
        for _ in range(50):
            _, steps, answer = world.arith_problem(rng, "train", ["Ana"])
            prog = world.pal_program(steps).replace("local ", "").replace("return x", "result = x")
            env = {}
            exec(prog, {}, env)
            self.assertEqual(env["result"], answer)


class ScoringTest(unittest.TestCase):
    def test_wilson(self):
        lo, hi = run.wilson(50, 100)
        self.assertAlmostEqual(lo, 0.4038, places=3)
        self.assertAlmostEqual(hi, 0.5962, places=3)
        self.assertEqual(run.wilson(0, 0), (0.0, 0.0))
        self.assertAlmostEqual(run.wilson(0, 100)[1], 0.0370, places=3)

    def test_normalize(self):
        self.assertEqual(run.normalize(" Tarin  Oskell. "), "tarin oskell")
        self.assertEqual(run.normalize("1,234"), "1234")
        self.assertEqual(run.normalize("12.0"), "12")
        self.assertNotEqual(run.normalize("12.5"), "12")


if __name__ == "__main__":
    unittest.main()
