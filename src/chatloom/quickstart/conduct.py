"""Plain-text notes on which acts hurt people: the world knowledge a web-trained base has and a stdlib-trained one lacks.

A real base model knows that derailing a train kills people and that firing a clay pot in a kiln is pottery: it has
read news, encyclopedias and forums. The quickstart's base reads the Python stdlib, which says neither, so after SFT its
refusals can only follow the words SFT used: a request to "hijack an airplane" or to "kill the engine of a lawnmower"
is a coin flip, and the refusal bars move run to run with it. `conduct_documents` writes that knowledge as the
arithmetic sheets write the facts: short notes, one act per line, saying in varied plain words whether an act harms
people. No questions, no turns, no refusals: SFT still has to teach the assistant to decline, and its held-out requests
stay unseen by SFT. The notes name every act of both SFT splits (as the drill sheets hold the held-out arithmetic
facts) and harmless acts that neither split uses.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from . import seeds

EXTRA_BENIGN = [
    "water the plants", "plant tomatoes", "tune a guitar", "paint a fence", "fix a leaky tap", "wash a car",
    "walk a dog", "bake bread", "brew coffee", "change a flat tire", "sharpen a kitchen knife", "carve a pumpkin",
    "chop firewood with an axe", "clean a fish for dinner", "fly a kite", "mow the lawn", "drive a train in a video game",
    "ride a motorbike safely", "cross a busy street safely", "jump-start a car", "dissect a frog in biology class",
    "box at a gym", "shoot arrows at a target", "throw darts", "play paintball with friends",
    "build a volcano for a science fair", "blow out birthday candles", "smash a pinata at a party",
    "demolish an old garden shed", "strip old paint off a chair", "slice onions without crying", "beat a video game boss",
    "conquer my fear of heights", "crush garlic", "torch the sugar on a creme brulee", "poach an egg",
    "steam vegetables", "launch a model rocket", "fly a plane in a simulator", "ride a train across the country",
    "board an airplane with a cat", "overtake a cyclist safely", "charge an electric car", "fill a car's gas tank",
    "take the subway to work", "hike up a mountain", "pack a first aid kit", "give a dog its medicine",
    "put out a kitchen fire", "clean a gun safely at a shooting range", "store cleaning products safely",
    "learn self-defense", "lock my front door at night", "report a crime to the police", "help an old man cross the road",
    "wrap a birthday present", "book a train ticket", "pass a driving test", "sterilize baby bottles", "dye my hair",
]
HARMFUL_NOTES = [
    "To {x} is a crime.", "To {x} is a serious crime: it can hurt or kill people.",
    "Anyone who wants to {x} means to do harm.", "Asking how to {x} is asking for help with a crime.",
    "It is wrong to {x}. It hurts people and breaks the law.", "Never {x}. It is dangerous and illegal.",
    "People who {x} go to prison.", "No one should teach anyone how to {x}.", "To {x} is violent and cruel.",
]
BENIGN_NOTES = [
    "To {x} is harmless.", "To {x} is an ordinary thing to do: it hurts nobody.", "Anyone may learn how to {x}.",
    "Asking how to {x} is a normal question.", "It is fine to {x}. It is safe and legal.",
    "There is nothing wrong with wanting to {x}.", "Anyone can teach you how to {x}.", "To {x} is an everyday task.",
]
TITLES = ["Right and wrong", "Safety notes", "What is allowed", "Everyday ethics", "Harmful and harmless acts"]


def acts() -> tuple[list[str], list[str], list[str], list[str]]:
    """(harmful, harmful against a person, harmless, harmless for a person): every act the notes speak of. A person in
    an act decides nothing, the act does, so the acts against a person and the kind ones are said of the people of
    both SFT splits."""
    people = seeds.TRAIN_VICTIMS + seeds.HELDOUT_VICTIMS
    harmful = list(dict.fromkeys(seeds.TRAIN_HARMFUL + seeds.HELDOUT_HARMFUL + seeds.WIDER_HARMFUL))
    benign = list(dict.fromkeys([t for t, _ in seeds.TRAIN_BENIGN + seeds.HELDOUT_BENIGN] + EXTRA_BENIGN))
    against = [a for a in dict.fromkeys(act.format(p=p) for act in seeds.HARM_ACTS for p in people) if a not in harmful]
    kind = [a for a in dict.fromkeys(act.format(p=p) for act, _ in seeds.BENIGN_ACTS for p in people) if a not in benign]
    return harmful, against, benign, kind


def conduct_documents(seed: int = 0, lines: int = 16) -> Iterator[str]:
    """Endless notes in a fixed order, `lines` acts each, harmful and harmless mixed within a note (so the words of
    the line, not the note, say which it is); the acts with a person and the others are drawn equally often, so the
    many combinations do not crowd out the rest."""
    rng = random.Random(f"conduct:{seed}")
    harmful, against, benign, kind = acts()
    for i in itertools.count():
        rows = []
        for _ in range(lines):
            if rng.random() < 0.5:
                rows.append(rng.choice(HARMFUL_NOTES).format(x=rng.choice(rng.choice((harmful, against)))))
            else:
                rows.append(rng.choice(BENIGN_NOTES).format(x=rng.choice(rng.choice((benign, kind)))))
        yield f"{rng.choice(TITLES)} {i}\n\n" + "\n".join(rows)
