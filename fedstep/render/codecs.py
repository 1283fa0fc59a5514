"""`fedstep codecs`: the update codecs, what each sends and how close its decoded update comes."""

from __future__ import annotations

import json

from fedstep.core import codecs


def render_codecs(as_json: bool = False) -> str:
    """The codecs as text (one block each) or as a JSON list (`codecs.describe()`)."""
    listing = codecs.describe()
    if as_json:
        return json.dumps(listing, indent=2)
    blocks = []
    for c in listing:
        traits = [t for t, on in (("sparse", c["sparse"]), ("error feedback", c["error_feedback"])) if on]
        traits.append("read by slices" if c["sliceable"] else "read whole")
        blocks.append(f"{c['name']}  {c['description']}\n    {', '.join(traits)}; decoded within {c['bound']}")
    usage = 'use: fedstep start --codec NAME (or fedstep local --codec NAME); in a run file: "codec": NAME'
    return "\n\n".join([*blocks, usage])
