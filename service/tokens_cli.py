"""``geowarn token create|list|revoke``: the API tokens of duty officers and services.

Tokens live in ``DATA_DIR/tokens.sqlite`` (console/tokens.py), hashed; the running daemon's
API reads the same file, so a token created or revoked here takes effect at the next request
without a restart. ``create`` prints the secret once, as the last word of its output, so a
script can take it with ``| awk '{print $NF}'``.

Exit codes: 0 done, 1 refused (bad tier/admin, duplicate name, unknown token), 2 configuration
error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from geowarn.config.roster import TIERS


def _store(args: argparse.Namespace) -> Any:
    from geowarn.console.tokens import TOKENS_FILE, TokenStore
    from geowarn.config.settings import load_settings

    data_dir = Path(args.data_dir) if args.data_dir else load_settings(args.config).data_dir
    return TokenStore(data_dir / TOKENS_FILE)


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _with_store(args: argparse.Namespace, action: Any) -> int:
    from geowarn.console.tokens import TokenError
    from geowarn.config.errors import ConfigError

    try:
        store = _store(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"configuration error: {p}", file=sys.stderr)
        return 2
    try:
        with store:
            action(store)
    except TokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _roster_refusal(args: argparse.Namespace) -> str | None:
    """Why a token for ``--admin`` would be useless: a unit the roster the daemon reads does not
    have (a typo in the code). None when it is fine."""
    from geowarn.config.errors import ConfigError
    from geowarn.config.roster import load_roster
    from geowarn.config.settings import load_settings

    try:
        roster = load_roster(load_settings(args.config).roster_path)
    except ConfigError as exc:
        return "; ".join(str(p) for p in exc.problems)
    unit = roster.units.get(args.admin)
    if unit is None:
        known = ", ".join(f"{u.admin} {u.name} ({u.tier})" for u in roster.units.values())
        return (f"unit {args.admin} is not on the roster {roster.source} (units: {known}); "
                "--not-on-roster to create it anyway")
    return None  # the tier is checked against the code's structure by the store


def cmd_create(args: argparse.Namespace) -> int:
    if not args.not_on_roster:
        why = _roster_refusal(args)
        if why is not None:
            print(f"error: {why}", file=sys.stderr)
            return 1

    def create(store: Any) -> None:
        token, secret = store.create(args.tier, args.admin, args.name, time.time())
        print(f"token {token.name!r} (id {token.id}, {token.tier} {token.admin}) created in {store.path}; only its hash is kept, "
              f"so this is the only time it is shown: {secret}")

    return _with_store(args, create)


def cmd_list(args: argparse.Namespace) -> int:
    def show(store: Any) -> None:
        tokens = store.list_tokens(include_revoked=args.all)
        print(f"{'id':>4}  {'name':<24} {'tier':<9} {'admin':<7} {'created':<21} revoked")
        for t in tokens:
            print(f"{t.id:>4}  {t.name:<24} {t.tier:<9} {t.admin:<7} {_iso(t.created):<21} {_iso(t.revoked)}")

    return _with_store(args, show)


def cmd_revoke(args: argparse.Namespace) -> int:
    def revoke(store: Any) -> None:
        t = store.revoke(args.token, time.time())
        print(f"token {t.name!r} (id {t.id}, {t.tier} {t.admin}) revoked")

    return _with_store(args, revoke)


def add_token_parsers(sub: Any) -> None:
    t = sub.add_parser("token", help="API tokens of the duty-officer console (create, list, revoke)")
    tsub = t.add_subparsers(dest="token_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, help="settings TOML (for GEOWARN_DATA_DIR)")
        p.add_argument("--data-dir", default=None, help="overrides GEOWARN_DATA_DIR")

    c = tsub.add_parser("create", help="create a token bound to an admin unit; prints it (once) as the last word")
    c.add_argument("--tier", required=True, choices=TIERS)
    c.add_argument("--admin", required=True, help="GB/T 2260 code of the unit: county 420527, city 420500, province 420000, national 100000")
    c.add_argument("--name", required=True, help="who or what uses it (shown in the audit trail)")
    c.add_argument("--not-on-roster", action="store_true", help="create it even though the roster has no such unit")
    common(c)
    c.set_defaults(func=cmd_create)

    ls = tsub.add_parser("list", help="tokens (never their secrets)")
    ls.add_argument("--all", action=argparse.BooleanOptionalAction, default=True, help="include revoked tokens (default: yes)")
    common(ls)
    ls.set_defaults(func=cmd_list)

    r = tsub.add_parser("revoke", help="revoke a token by name or id; the API refuses it from the next request on")
    r.add_argument("token", help="the token's name or id")
    common(r)
    r.set_defaults(func=cmd_revoke)
