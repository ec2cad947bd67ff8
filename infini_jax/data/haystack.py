"""Haystack text for generated passkey / needle prompts.

Two built-in haystacks:

* ``"default"``: a few KB of varied, generic English prose (written for this package) so that the
  filler is not a single repeated sentence;
* ``"classic"``: the well-known filler of the passkey literature,
  ``"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."``.

``load_haystack(haystack_dir)`` reads your own ``*.txt`` files instead (like nanotron's
``--haystack_dir ./haystack_txt/``), concatenated in sorted file-name order. The prompt builder tiles
the haystack's token ids as often as needed, so a short haystack is enough for any context length.
"""

from __future__ import annotations

import glob
import os

CLASSIC_HAYSTACK = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)

DEFAULT_HAYSTACK = """\
The old harbour town wakes up slowly. Fishing boats come back before dawn, and the first cafés open \
their shutters while the streets are still wet from the night rain. Gulls argue over the nets on the \
quay. By eight o'clock the market square is full of crates of apples, bread still warm from the oven, \
and people who stop to talk about the weather for longer than they meant to.

Gardening rewards patience more than skill. A tomato plant needs sun, water and time, and no amount of \
worrying will make it ripen faster. Experienced gardeners keep notes about when they sowed each bed, \
which varieties did well, and where the frost settled first. Over the years those notes become a map of \
the garden that no book could provide.

Rivers shape the land in ways that are easy to miss. Over thousands of years, a small stream can carve \
a valley, move tons of gravel and build fertile plains at its mouth. Towns grew up along rivers because \
the water offered transport, food and power for mills. Many of those mills are now museums, and their \
wheels turn only for visitors on summer afternoons.

A good library is quiet but never silent. Pages turn, chairs creak, and somebody always whispers a \
question to the librarian at the desk. The shelves hold novels, atlases, cookbooks and old newspapers \
bound in heavy volumes. Students come to study, retired teachers come to read the papers, and children \
come on rainy Saturdays to choose a stack of picture books to take home.

Mountain weather changes quickly. A clear morning can turn into fog before noon, and hikers learn to \
carry a warm layer even in July. The path climbs through pine forest, crosses a meadow full of wild \
flowers and ends at a small hut where the keeper serves soup and tea. From the terrace, on a good day, \
you can see three lakes and the distant line of the coast.

Learning to cook is mostly learning to pay attention. Onions soften and turn golden, sauces thicken, \
and bread dough becomes smooth and elastic under the hands. Recipes give quantities, but the cook still \
has to taste, smell and look. Most families have a dish that nobody can write down properly, because it \
depends on a grandmother's habits more than on any measurement.

Trains are a calm way to travel. The landscape slides past the window: fields, small stations, \
industrial yards and then the suburbs of the next city. Passengers read, sleep, play cards or simply \
watch the view. Long journeys have their own rhythm, marked by the ticket inspector, the trolley with \
coffee, and the announcements of each stop in two languages.

Bees are busy from early spring to late autumn. A single colony can visit millions of flowers in a \
season, and the honey it stores tastes different depending on what was in bloom. Beekeepers move slowly \
and speak softly around the hives. They check the frames, look for the queen and make sure the colony \
has enough room to grow.

The night sky looks different away from the city lights. Once your eyes adapt, thousands of stars \
appear, and the pale band of the galaxy stretches from one horizon to the other. Amateur astronomers \
set up their telescopes on cold hillsides and wait for the clouds to pass. They talk in low voices, \
share hot drinks and point out planets, clusters and the faint smudge of a distant nebula.

Winter evenings are made for long conversations. Friends gather around a table, a pot of stew simmers \
on the stove, and the windows fog up from the warmth inside. Someone tells a story about a journey that \
went wrong, someone else remembers a summer by the sea, and the evening ends later than anyone planned.
"""

HAYSTACKS = {"default": DEFAULT_HAYSTACK, "classic": CLASSIC_HAYSTACK}


def load_haystack(haystack_dir: str | os.PathLike | None = None, kind: str = "default") -> str:
    """Returns the haystack text: the ``*.txt`` files of ``haystack_dir`` (sorted), else a built-in one.

    Args:
      haystack_dir: directory of ``*.txt`` files, concatenated in sorted name order (separated by a
        newline). ``None`` selects the built-in haystack named by ``kind``.
      kind: ``"default"`` (varied prose) or ``"classic"`` (the grass-is-green filler).
    """
    if haystack_dir is None:
        if kind not in HAYSTACKS:
            raise ValueError(
                f"Unknown haystack kind {kind!r}: choose one of {sorted(HAYSTACKS)}, or pass "
                "haystack_dir with your own *.txt files."
            )
        return HAYSTACKS[kind]
    haystack_dir = os.fspath(haystack_dir)
    if not os.path.isdir(haystack_dir):
        raise ValueError(
            f"Haystack directory {haystack_dir!r} does not exist: create it with some *.txt "
            "files, or pass haystack_dir=None to use the built-in haystack."
        )
    paths = sorted(glob.glob(os.path.join(haystack_dir, "*.txt")))
    if not paths:
        raise ValueError(
            f"Haystack directory {haystack_dir!r} has no *.txt files: add some plain-text "
            "files, or pass haystack_dir=None to use the built-in haystack."
        )
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read().strip())
    text = "\n".join(t for t in texts if t)
    if not text:
        raise ValueError(f"The *.txt files in {haystack_dir!r} are all empty: put some text in them.")
    return text + "\n"
