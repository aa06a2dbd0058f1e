"""``vmboot cache ls|clear``: what the vmboot cache holds, and emptying it."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
The vmboot cache ($VMBOOT_CACHE, else $XDG_CACHE_HOME/vmboot, else ~/.cache/vmboot) holds
the busybox and Debian kernels `vmboot fetch` downloads and the guests vmboot saves: the
snapshots of `vmboot exec --warm` and of the pytest plugin (one per guest configuration).

  ls      every entry, least recently used first: kind, size on disk, last use, path
  clear   remove every entry (or only those of --kind)

The cache is bounded: when something is stored, the least recently used entries are removed
until it fits in $VMBOOT_CACHE_MAX (a size such as 2G, or "unlimited"; default {default}).
An entry another process is using (a snapshot being made or restored by a test session) is
never removed by that.
"""

EPILOG = """\
examples:
  vmboot cache ls
  vmboot cache ls --json | jq '.total'
  vmboot cache clear --kind snapshot
  VMBOOT_CACHE_MAX=1G pytest tests/      the plugin keeps its snapshots within 1 GiB
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from vmboot.execute.cache import DEFAULT_CACHE_MAX, EntryKind

    p = sub.add_parser("cache", help="list or clear the vmboot cache (downloads, saved guests)",
                       description=DESCRIPTION.format(default=DEFAULT_CACHE_MAX), epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", help="list the cache's entries, least recently used first")
    ls.add_argument("--json", action="store_true",
                    help='print {"cache", "limit", "total", "entries": [...]} as JSON')
    ls.set_defaults(func=run_ls)
    clear = actions.add_parser("clear", help="remove the cache's entries")
    clear.add_argument("--kind", action="append", choices=[k.value for k in EntryKind],
                       help="only entries of this kind (repeatable; default: all)")
    clear.add_argument("--json", action="store_true", help="print what was removed as JSON")
    clear.set_defaults(func=run_clear)


def run_ls(args: argparse.Namespace) -> int:
    from vmboot.execute.cache import approx_size, cache_dir, cache_entries, cache_limit, describe_entry

    entries = cache_entries()
    total = sum(e.size for e in entries)
    limit = cache_limit()
    if args.json:
        print(json.dumps({"cache": str(cache_dir()), "limit": limit, "total": total,
                          "entries": [e.as_dict() for e in entries]}))
        return 0
    for entry in entries:
        print(describe_entry(entry))
    bound = "unlimited" if limit is None else approx_size(limit)
    print(f"{len(entries)} entries, {approx_size(total)} of {bound} in {cache_dir()}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from vmboot.execute.cache import EntryKind, approx_size, clear_cache

    kinds = None if not args.kind else frozenset(EntryKind(k) for k in args.kind)
    removed = clear_cache(kinds=kinds)
    if args.json:
        print(json.dumps({"removed": [e.as_dict() for e in removed]}))
        return 0
    print(f"removed {len(removed)} entries ({approx_size(sum(e.size for e in removed))})")
    return 0
