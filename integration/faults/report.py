#!/usr/bin/env python3
"""Judges one fault-suite scenario and renders the suite's table (integration/faults.sh).

    report.py judge RESULTS SCENARIO RESPONSES [--drained TARGET:FILE ...] [--forward] [--spool]
                    [--no-503] [--recovery-from SEQ] [--note TEXT ...]
    report.py table RESULTS [--markdown]

`judge` appends one JSON line to RESULTS and prints it as a row. For a publish scenario each --drained pairs a
target index of the load with what the independent consumer read from its queue/topic:
  - lost:       ids answered 202 (spooled or not) that the consumer never received -> FAIL when > 0
  - duplicated: copies beyond the first of an id the consumer received more than once (reported, allowed:
                delivery is at-least-once)
  - extra:      ids received that were never answered 202 (a 503 after the broker stored it, or an answer the
                client never got because the gateway died): allowed, at-least-once
  - mismatched: a received id whose body `seq` is not the request the 202 was for -> FAIL
  - a 202 without an `id`, or the same id answered to two requests -> FAIL
--no-503 (a spool variant) makes any 503 a failure. --forward judges forwarding instead: at least 99.9 % of the
requests must be answered 200. --fail TEXT records a failure the caller saw (the gateway's exit status on SIGTERM).
--recovery-from SEQ: the requests from SEQ on were sent after the fault was over and the gateway ready again; the
scenario fails when not one of them succeeded (no recovery).
"""

import collections
import json
import sys

COLUMNS = ["scenario", "sent", "202", "503", "other", "consumed", "lost", "duplicated", "extra", "result", "notes"]


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def judge(argv):
    results, scenario, responses = argv[:3]
    drained, notes, failures = [], [], []
    forward = spool = no503 = False
    recovery_from = None
    i = 3
    while i < len(argv):
        a = argv[i]
        if a == "--drained":
            t, _, f = argv[i + 1].partition(":")
            drained.append((int(t), f))
            i += 2
        elif a == "--note":
            notes.append(argv[i + 1])
            i += 2
        elif a == "--fail":
            failures.append(argv[i + 1])
            i += 2
        elif a == "--recovery-from":
            recovery_from = int(argv[i + 1])
            i += 2
        elif a == "--forward":
            forward = True
            i += 1
        elif a == "--spool":
            spool = True
            i += 1
        elif a == "--no-503":
            no503 = True
            i += 1
        else:
            raise SystemExit(f"report.py: unknown argument {a}")

    rs = load_jsonl(responses)
    sent = len(rs)
    by_status = collections.Counter(r["status"] for r in rs)
    ok_status = 200 if forward else 202
    n_ok = by_status.get(ok_status, 0)
    n503 = by_status.get(503, 0)
    other = collections.Counter()
    for r in rs:
        if r["status"] not in (ok_status, 503):
            other[f"err:{r.get('error', '?')}" if r["status"] == 0 else str(r["status"])] += 1
    row = {"scenario": scenario, "sent": sent, "503": n503, "other": sum(other.values())}

    if forward:
        row["202"] = "-"
        for k in ("consumed", "lost", "duplicated", "extra"):
            row[k] = "-"
        rate = n_ok / sent if sent else 0.0
        notes.insert(0, f"200: {n_ok}/{sent} = {100 * rate:.2f}%")
        if rate < 0.999:
            failures.append("forwarding success below 99.9%")
    else:
        row["202"] = n_ok
        spooled = sum(1 for r in rs if r.get("spooled"))
        if spooled or spool:
            notes.insert(0, f"spooled: {spooled}")
        acked = {}  # id -> seq of the request it answered
        for r in rs:
            if r["status"] != 202:
                continue
            if not r.get("id"):
                failures.append(f"202 without id (seq {r['seq']})")
                continue
            if r["id"] in acked:
                failures.append(f"id {r['id']} answered to requests {acked[r['id']]} and {r['seq']}")
            acked[r["id"]] = r["seq"]
        consumed = lost = dup = extra = mismatched = 0
        targets_drained = {t for t, _ in drained}
        for r in rs:
            if r["status"] == 202 and r["target"] not in targets_drained:
                failures.append(f"no consumer for target {r['target']}")
                break
        lost_examples = []
        extra_by_answer = collections.Counter()
        for t, f in drained:
            msgs = load_jsonl(f)
            counts = collections.Counter(m["id"] for m in msgs)
            want = {i: s for i, s in acked.items() if rs[s]["target"] == t}
            consumed += len(counts)
            dup += sum(c - 1 for c in counts.values())
            extra += sum(1 for i in counts if i not in want)
            for m in msgs:
                if m["id"] not in want and isinstance(m.get("seq"), int) and 0 <= m["seq"] < sent:
                    r = rs[m["seq"]]
                    extra_by_answer[f"err:{r.get('error', '?')}" if r["status"] == 0 else str(r["status"])] += 1
            missing = [i for i in want if i not in counts]
            lost += len(missing)
            lost_examples += [f"{i} (seq {want[i]})" for i in missing[:3]]
            for m in msgs:
                if m["id"] in want and m.get("seq") != want[m["id"]]:
                    mismatched += 1
        row.update(consumed=consumed, lost=lost, duplicated=dup, extra=extra)
        if extra_by_answer:
            notes.append("extra were answered: " + ", ".join(f"{k} x{v}" for k, v in sorted(extra_by_answer.items())))
        if lost:
            failures.append(f"{lost} acknowledged message(s) lost, e.g. {', '.join(lost_examples[:3])}")
        if mismatched:
            failures.append(f"{mismatched} message(s) whose body is not the request their 202 answered")
        if no503 and n503:
            failures.append(f"{n503} 503s with a spool")

    if other:
        notes.append("other: " + ", ".join(f"{k} x{v}" for k, v in sorted(other.items())))
    if recovery_from is not None:
        after = [r for r in rs if r["seq"] >= recovery_from]
        ok_after = sum(1 for r in after if r["status"] == ok_status)
        notes.append(f"after recovery: {ok_after}/{len(after)} {ok_status}")
        if after and ok_after == 0:
            failures.append("no success after the fault was over (no recovery)")
    row["result"] = "FAIL" if failures else "pass"
    row["notes"] = "; ".join(failures + notes)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(render([row], markdown=False))
    return 0


def render(rows, markdown):
    cells = [[str(r.get(c, "")) for c in COLUMNS] for r in rows]
    if markdown:
        out = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(out)
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS[:-1])]
    lines = []
    for row in [COLUMNS] + cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                     + "  " + row[-1])
    return "\n".join(lines)


def table(argv):
    rows = load_jsonl(argv[0])
    print(render(rows, markdown="--markdown" in argv))
    return 1 if any(r["result"] != "pass" for r in rows) else 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("judge", "table"):
        raise SystemExit(__doc__)
    sys.exit(judge(sys.argv[2:]) if sys.argv[1] == "judge" else table(sys.argv[2:]))
