#!/usr/bin/env python3
"""Writes examples/happy_stories_prompts.jsonl: 240 story openings for the happy-stories demo.

The openings are written for this project from the templates below, in the small vocabulary
of TinyStories-style children's stories. They stop mid-story so the policy has to continue,
and are meant to be neutral on average: the demo measures how far RLHF moves the sentiment
of the continuation, so the prompts must not decide it. Deterministic (fixed seed).
Usage: python3 scripts/make_story_prompts.py [out.jsonl]
"""
import json
import random
import sys
from pathlib import Path

COUNT = 240

# (name, subject pronoun, possessive, object pronoun)
KIDS = [
    ("Lily", "she", "her", "her"), ("Tom", "he", "his", "him"), ("Ben", "he", "his", "him"),
    ("Mia", "she", "her", "her"), ("Sam", "he", "his", "him"), ("Anna", "she", "her", "her"),
    ("Max", "he", "his", "him"), ("Lucy", "she", "her", "her"), ("Tim", "he", "his", "him"),
    ("Sue", "she", "her", "her"), ("Jack", "he", "his", "him"), ("Emma", "she", "her", "her"),
]
# (description used after "there was", pet name, subject pronoun, possessive)
ANIMALS = [
    ("a little dog", "Spot", "he", "his"), ("a small cat", "Kitty", "she", "her"),
    ("a little bird", "Tweet", "he", "his"), ("a tiny mouse", "Pip", "he", "his"),
    ("a big brown bear", "Bruno", "he", "his"), ("a young rabbit", "Hops", "she", "her"),
    ("an old frog", "Fred", "he", "his"), ("a little duck", "Daisy", "she", "her"),
]
PLACES = ["park", "garden", "forest", "beach", "farm", "lake", "hill", "river", "zoo", "market"]
TOYS = ["ball", "kite", "car", "boat", "teddy bear", "doll", "truck", "drum"]
COLORS = ["red", "blue", "yellow", "green", "pink", "orange"]
FOUND = ["box", "key", "shell", "stone", "feather", "map", "note", "bell"]
HIDING = ["bed", "chair", "table", "pillow", "rug", "coat"]
SIZES = ["small", "big", "shiny", "old", "round", "tiny"]
SIGHTS = ["a big tree with a hole in it", "a long line of ants", "a door in the side of a hill",
          "a boat with no one in it", "a tall tower made of sticks", "a puddle that looked very deep",
          "a strange light in the grass", "a nest on a low branch"]
TIMES = ["One day", "One morning", "After lunch", "On Saturday", "Later that day", "One evening"]
WEATHER = ["rainy", "windy", "snowy", "foggy", "hot"]


def a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(s):
    return s[0].upper() + s[1:]


def openings(rng):
    """Yields candidate openings forever; each template is one way a story can start."""
    while True:
        name, he, his, him = rng.choice(KIDS)
        other = rng.choice([k for k in KIDS if k[0] != name])
        animal, pet, it, its = rng.choice(ANIMALS)
        place, toy, color = rng.choice(PLACES), rng.choice(TOYS), rng.choice(COLORS)
        time = rng.choice(TIMES)
        t = rng.randrange(16)
        if t == 0:
            yield f"{time}, {name} went to the {place} with {his} {color} {toy}."
        elif t == 1:
            yield f"{name} found {a(rng.choice(SIZES))} {rng.choice(FOUND)} under {his} {rng.choice(HIDING)}."
        elif t == 2:
            yield f"Once upon a time, there was {animal} named {pet}. {cap(it)} lived near the {place}."
        elif t == 3:
            yield f"{name} and {other[0]} walked to the {place}. There they saw {rng.choice(SIGHTS)}."
        elif t == 4:
            yield f"It was a {rng.choice(WEATHER)} day, and {name} had to stay inside. {cap(he)} looked out the window and saw"
        elif t == 5:
            yield f"{name}'s mom gave {him} {a(color)} {toy}. {cap(he)} took it to the {place} and"
        elif t == 6:
            yield f"{time}, {pet} the {animal.split()[-1]} saw {rng.choice(SIGHTS)}."
        elif t == 7:
            thing, stuff = rng.choice([("tower", "blocks"), ("house", "sticks"), ("sandcastle", "sand"),
                                       ("paper boat", "paper"), ("snowman", "snow"), ("bird house", "wood")])
            yield f"{name} wanted to build {a(thing)}, but {he} did not have enough {stuff}."
        elif t == 8:
            yield f"{name} dropped {his} {toy} in the {rng.choice(['river', 'mud', 'lake', 'grass'])}. {cap(he)} looked at it and"
        elif t == 9:
            yield f"{name} had a new {toy}. {other[0]} asked if {other[1]} could have a turn."
        elif t == 10:
            yield f"{time}, {name} and {his} dad went to the {place}. Dad said they had to be home before dinner."
        elif t == 11:
            sound = rng.choice(["a loud noise", "a soft knock", "a strange sound", "a long whistle"])
            yield f"{time}, {name} heard {sound} outside the house. {cap(he)} ran to the {rng.choice(['door', 'window'])} to see"
        elif t == 12:
            yield f"{pet} the {animal.split()[-1]} could not find {its} way home from the {place}."
        elif t == 13:
            yield f"{name} saw {animal} sitting near the {place}. It had {a(color)} ribbon on its neck."
        elif t == 14:
            yield f"{time}, {name} tried to climb the tallest tree in the {place}. Halfway up, {he} heard"
        else:
            yield f"{name} and {other[0]} both wanted the last {rng.choice(['cookie', 'apple', 'cupcake', 'candy'])}. {name} looked at {other[0]} and"


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "examples/happy_stories_prompts.jsonl"
    rng = random.Random(20240601)
    seen, prompts = set(), []
    for p in openings(rng):
        if p not in seen:
            seen.add(p)
            prompts.append(p)
        if len(prompts) == COUNT:
            break
    with open(out, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    print(f"wrote {len(prompts)} prompts to {out}")


if __name__ == "__main__":
    main()
