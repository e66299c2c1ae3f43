"""Two instruction models on the same edits, scene by scene: where does one keep less of the scene than the other?

    python benchmarks/edit_pairs.py A/report.json B/report.json [--names A B]

Both reports are `recomposer bench edits` runs with the same scenes, seeds and settings (each kind's "each" lists
the model's figures edit by edit, in the same order in every run). A model that does nothing keeps the whole scene
(background PSNR at its VAE's ceiling), so a model that edits more often may lose background only by its edits'
own cost (a recoloured blob that spills past the object). This splits each kind's edits by which model made them
(the judge's success) and gives both models' mean background PSNR on each group: on the edits both made it compares
how cleanly each edits; on those neither made, how much each kept while failing (copying lost, or an edit tried in
the wrong place); on those only one made, what that edit cost beside the other model's doing nothing.
"""

import argparse
import json
from pathlib import Path

from recomposer.evaluation.edits import PAIR_GROUPS, paired

LABELS = {"neither": "neither edits", "both": "both edit", "only A": "only {a} edits", "only B": "only {b} edits"}


def markdown(table: dict, names: tuple[str, str]) -> str:
    def cell(group):
        if group["A"] is None:
            return str(group["edits"])
        return f"{group['edits']}: {group['A']:.1f} / {group['B']:.1f}"

    head = " | ".join(LABELS[name].format(a=names[0], b=names[1]) + f" (n: {names[0]} / {names[1]} dB)"
                      for name, _, _ in PAIR_GROUPS)
    lines = [f"| edit | {head} |", "|---" * (len(PAIR_GROUPS) + 1) + "|"]
    for kind, groups in table.items():
        if all(g["A"] is None for g in groups.values()):
            continue  # background edits: no background figure
        lines.append(f"| {kind} | " + " | ".join(cell(groups[name]) for name, _, _ in PAIR_GROUPS) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--names", nargs=2, default=("A", "B"))
    args = parser.parse_args()
    table = paired(json.loads(args.a.read_text()), json.loads(args.b.read_text()))
    print(markdown(table, tuple(args.names)))


if __name__ == "__main__":
    main()
