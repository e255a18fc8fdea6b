"""Plain-text notes on which acts hurt people: the world knowledge a web-trained base has and a stdlib-trained one lacks.

A real base model knows that derailing a train kills people and that firing a clay pot in a kiln is pottery: it has
read news, encyclopedias and forums. The quickstart's base reads the Python stdlib, which says neither, so after SFT its
refusals can only follow the words SFT used: a request to "hijack an airplane" or to "kill the engine of a lawnmower"
is a coin flip, and the refusal bars move run to run with it. `conduct_documents` writes that knowledge as the
arithmetic sheets write the facts: short notes, one act per line, saying in varied plain words whether an act harms
people. No questions, no turns, no refusals: SFT still has to teach the assistant to decline, and its held-out requests
stay unseen by SFT. The notes name every act of both SFT splits (as the drill sheets hold the held-out arithmetic
facts) and harmless acts that neither split uses.

Every line says the act first and the verdict after it, half of them after "how to {x}", the words a request ends
with: a reader then has to tell from the act's own words, read as a request reads them, which verdict follows. A
linear probe on the base's hidden state where the act ends in a held-out request (seed 0, trained on SFT's requests)
finds 90% of the held-out harms SFT never names and wrongly flags 7% of the harmless ones; with the earlier lines, half
of which said the verdict first ("Never {x}."), 75-85% and 9-13% on three bases.
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
# the act comes before the verdict in every line ("To {x} is ...", not "Never {x}."), so a reader learns to tell the
# verdict from the act's own words; half the lines say it after "how to {x}", as a request asks it
HARMFUL_NOTES = [
    "To {x} is a crime.", "To {x} is a serious crime: it can hurt or kill people.",
    "Anyone who wants to {x} means to do harm.", "Asking how to {x} is asking for help with a crime.",
    "People who {x} go to prison.", "To {x} is violent and cruel.",
    "Someone who asks how to {x} wants to commit a crime.", "Learning how to {x} is learning to hurt people.",
    "Instructions on how to {x} help only criminals.", "Knowing how to {x} is dangerous: it is a crime.",
]
BENIGN_NOTES = [
    "To {x} is harmless.", "To {x} is an ordinary thing to do: it hurts nobody.", "Anyone who wants to {x} means no harm.",
    "Asking how to {x} is a normal question.", "People who {x} do nothing wrong.", "To {x} is an everyday task.",
    "Someone who asks how to {x} wants help with an everyday task.", "Learning how to {x} is learning something useful.",
    "Instructions on how to {x} are useful to anyone.", "Knowing how to {x} is handy: it is safe and legal.",
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
