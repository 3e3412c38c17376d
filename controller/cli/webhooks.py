"""``mlexp webhook``: subscribe a URL to events, list, remove, ping, see deliveries.

    mlexp webhook add URL --event run.succeeded [--event run.failed ...] [--experiment ID]
    mlexp webhook list
    mlexp webhook rm ID
    mlexp webhook test ID
    mlexp webhook deliveries ID [--status pending|delivered|failed] [--limit N]

``add`` prints the signing secret: it is shown this once.
"""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import common
from controller.domain.webhooks import EVENT_TYPES


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this noun's commands to the ``mlexp`` parser."""
    webhook = sub.add_parser(
        "webhook", help="webhooks: signed CloudEvents POSTed when runs end, models move"
    ).add_subparsers(required=True, metavar="ACTION")
    add = webhook.add_parser("add", help="subscribe a URL (prints its secret once)")
    add.add_argument("hook_url", metavar="URL")  # not "url": that is the service's
    add.add_argument("--event", action="append", required=True, choices=EVENT_TYPES, dest="events")
    add.add_argument("--experiment", help="only this experiment's events")
    add.set_defaults(func=cmd_add)
    listing = webhook.add_parser("list", help="your webhooks")
    listing.set_defaults(func=cmd_list)
    rm = webhook.add_parser("rm", help="delete a webhook (pending deliveries are dropped)")
    rm.add_argument("webhook_id")
    rm.set_defaults(func=cmd_rm)
    test = webhook.add_parser("test", help="send a ping")
    test.add_argument("webhook_id")
    test.set_defaults(func=cmd_test)
    deliveries = webhook.add_parser("deliveries", help="a webhook's deliveries, newest first")
    deliveries.add_argument("webhook_id")
    deliveries.add_argument("--status", choices=["pending", "delivered", "failed"])
    deliveries.add_argument("--limit", type=int, default=50)
    deliveries.set_defaults(func=cmd_deliveries)


def cmd_add(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"url": args.hook_url, "events": args.events}
    if args.experiment:
        body["experiment_id"] = args.experiment
    created = common.client(args).post("/webhooks", body)
    common.show(
        args,
        created,
        f"created {created['webhook_id']} -> {created['url']} ({', '.join(created['events'])})\n"
        f"signing secret (shown once, keep it): {created['secret']}",
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = common.client(args)
    hooks = client._check(client.http.get("/webhooks")).json()
    if args.json:
        common.dump(hooks)
        return 0
    for hook in hooks:
        scope = f"  experiment {hook['experiment_id']}" if hook.get("experiment_id") else ""
        print(f"{hook['webhook_id']}  {hook['url']}  {','.join(hook['events'])}{scope}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = common.client(args)
    client._check(client.http.delete(f"/webhooks/{args.webhook_id}"))
    common.show(args, {"deleted": args.webhook_id}, f"deleted {args.webhook_id}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    queued = common.client(args).post(f"/webhooks/{args.webhook_id}/test")
    common.show(args, queued, f"ping queued: delivery {queued['delivery_id']}")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    client = common.client(args)
    params: dict[str, str | int] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    rows = client._check(
        client.http.get(f"/webhooks/{args.webhook_id}/deliveries", params=params)
    ).json()
    if args.json:
        common.dump(rows)
        return 0
    for row in rows:
        code = row.get("last_status_code") or "-"
        error = f"  {row['last_error']}" if row.get("last_error") else ""
        print(
            f"{row['delivery_id']}  {row['event_type']:<16} {row['status']:<9} "
            f"attempts={row['attempts']} last={code}  {row['created_at']}{error}"
        )
    return 0
