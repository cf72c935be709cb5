"""``pacd``: the command line (API.md). Talks to the daemon only through :mod:`pacd.client`.

Every command takes ``--json`` (one JSON document on stdout) and exits 0 on
success, or with the error class's exit code and a one-line message on stderr.
When a command needs more presence than the cached session proves and the
terminal is interactive, the presence ceremony runs right here ("Touch your
security key…", PIN by getpass) and the command is retried once.

``--credential-json FILE`` (``approve``) posts an assertion made elsewhere —
for scripts, and for tests that sign with a software authenticator.

``--demo`` (any command) uses the demo authenticator
(:mod:`pacd.presence.demo_authenticator`) instead of a security key, for a
first run on a machine without one; only when the daemon says it accepts it
(``allow_software_authenticator``). Nobody touches it, so its ceremonies run
without a terminal too.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import getpass
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pacd import __version__
from pacd.config import PLATFORM_PRESENCE_METHODS, load_config
from pacd.errors import (
    DaemonUnavailable,
    IntegrityError,
    InvalidRequest,
    PacdError,
    PresenceRequired,
    SoftwareAuthenticatorRefused,
    Unauthorized,
)

if TYPE_CHECKING:
    from fido2.client import UserInteraction
    from fido2.ctap import CtapDevice

Handler = Callable[[argparse.Namespace, "Ctx"], Any]

T = TypeVar("T")


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        from pacd.client import Client

        self.args = args
        self.json = bool(getattr(args, "json", False))
        #: ceremonies use the demo authenticator, not a security key
        self.demo = bool(getattr(args, "demo", False))
        self.config = load_config()
        self.client = Client(self.config)

    def out(self, data: Any, human: Callable[[Any], str] | str | None = None) -> None:
        if self.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        elif callable(human):
            print(human(data))
        elif human is not None:
            print(human)
        else:
            print(json.dumps(data, indent=2, sort_keys=True))

    def say(self, text: str) -> None:
        """Progress for people; stderr so ``--json`` stdout stays one document."""
        print(text, file=sys.stderr, flush=True)

    # --- presence -------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A request that may need a session: run the ceremony once if it does."""
        return self.with_session(lambda: self.client.request(method, path, body))

    def with_session(self, send: Callable[[], T]) -> T:
        """Run ``send``; if the daemon wants a higher level, prove it once and retry.

        Without a terminal there is nobody to touch a key: say which session to open.
        """
        try:
            return send()
        except (PresenceRequired, Unauthorized) as exc:
            level = exc.extra.get("required_level") or getattr(exc, "required_level", "")
            if not level or not (sys.stdin.isatty() or self.demo):
                raise type(exc)(
                    f"{exc.message} — open a session first: pacd session --level "
                    f"{level or 'biometric'}", **exc.extra) from None
            self.session(str(level))
            return send()

    def session(self, level: str) -> dict[str, Any]:
        from pacd.presence.client import authenticate

        begin = self.client.request("POST", "/v1/sessions/begin", {"level": level}, auth=False)
        self.say(f"Presence needed for a {level} session.")
        with self.authenticator() as device:
            credential = authenticate(begin["publicKey"], begin["origin"],
                                      terminal_interaction(self), device)
        return self.client.complete_session(begin["session_id"], credential)

    @contextlib.contextmanager
    def authenticator(self) -> Iterator[CtapDevice | None]:
        """The device ceremonies use: the demo authenticator with ``--demo`` (its state
        saved afterwards), else None (the security key found then)."""
        if not self.demo:
            yield None
            return
        from pacd.presence.demo_authenticator import demo_authenticator

        allowed = self.client.status().get("demo_authenticator", {}).get("allowed")
        if not allowed:
            raise SoftwareAuthenticatorRefused(
                "the daemon does not accept the demo authenticator (set "
                "allow_software_authenticator = true in its config.toml, as make run does); "
                "use a security key")
        self.say("Using the demo authenticator (a software key: NOT secure).")
        with demo_authenticator(self.config) as device:
            yield device


def terminal_interaction(ctx: Ctx) -> UserInteraction:
    """python-fido2's UserInteraction for a terminal.

    ``fido2.client`` (and the X.509 code it brings) is imported here, by the
    commands that run a ceremony: ``pacd daemon`` starts through this module
    too, and a daemon start must not wait for modules it never uses.
    """
    from fido2.client import UserInteraction

    class TerminalInteraction(UserInteraction):
        def prompt_up(self) -> None:
            if not ctx.demo:  # the demo authenticator needs no touch
                ctx.say("Touch your security key…")

        def request_pin(self, permissions: Any, rd_id: str | None) -> str | None:
            return getpass.getpass("Security key PIN: ")

        def request_uv(self, permissions: Any, rd_id: str | None) -> bool:
            if not ctx.demo:
                ctx.say("Verify yourself on the key (fingerprint or PIN)…")
            return True

    return TerminalInteraction()


# --- human formatting ----------------------------------------------------------


def _status_text(s: dict[str, Any]) -> str:
    owner = s.get("owner")
    lines = [
        f"daemon:     running (pacd {s['version']}, pid {s['pid']}, socket {s['socket']})",
        "owner:      " + (f"{owner['name']} ({owner['credentials']} presence credential(s))"
                          if owner else "none yet — run: pacd init --name NAME"),
        f"keychain:   {s['keychain_backend']}",
        f"podman:     {s.get('podman_url') or 'default user socket'}",
        f"approvals:  {s['pending_approvals']} pending",
        "presence:",
    ]
    for p in s.get("presence_methods", []):
        mark = "yes" if p["available"] else "no "
        lines.append(f"  [{mark}] {p['name']}: {p['detail']}")
    failures = s.get("integrity_failures") or []
    if failures:
        lines.append(f"INTEGRITY:  {len(failures)} state row(s) failed their check "
                     "(treated as absent; see `pacd audit tail`):")
        lines += [f"  {f['table']} {f['key']}" for f in failures]
    demo = s.get("demo_authenticator") or {}
    if demo.get("allowed") or demo.get("enrolled"):
        lines.append(f"demo key:   {'accepted' if demo.get('allowed') else 'REFUSED'}, "
                     f"{demo.get('enrolled', 0)} enrolled (a software key: NOT secure; "
                     "allow_software_authenticator in config.toml)")
    lines += _audit_status_lines(s.get("audit"))
    if s.get("fprintd_bus_address"):
        lines.append(f"fprintd bus: {s['fprintd_bus_address']} (NOT the system bus: whatever "
                     "answers there can open biometric sessions)")
    return "\n".join(lines)


def _audit_status_lines(a: dict[str, Any] | None) -> list[str]:
    if not a:
        return []
    age = a.get("checkpoint_age_s")
    lines = [f"audit:      {'trusted' if a['trusted'] else 'UNTRUSTED'}, head {a['head_seq']}, "
             f"checkpoint {a.get('checkpoint_seq')}"
             + ("" if age is None else f" written {age:.1f} s ago")]
    if a.get("untrusted"):
        lines.append(f"  from entry {a['untrusted']['first_bad_seq']}: {a['untrusted']['found']}")
    if a.get("checkpoint_error"):
        err = a["checkpoint_error"]
        lines.append(f"  checkpoint write failed {err['count']} time(s): {err['message']}")
    if not a["trusted"]:
        lines.append("  actions above basic are refused; run: pacd audit reanchor")
    return lines


def _plugin_title(p: dict[str, Any]) -> str:
    """A listed plugin's name and version; its name alone when it states no version."""
    return f"{p['name']} {p['version']}" if p["version"] else str(p["name"])


def _container_text(c: dict[str, Any]) -> str:
    lines = [f"{c['name']}  id {c['id']}  state {c['state']}  created {c['created_at']}"]
    for a in c["agents"]:
        lines.append(f"  agent {a['name']:<12} {a['state']:<9} {a['isolation']:<13} "
                     f"{a['data_access']:<10} {','.join(a['capabilities'])}")
    for p in c["plugins"]:
        lines.append(f"  plugin {_plugin_title(p)} for {p['agent']}: {p['state']}")
    storage = c.get("storage")
    if storage:
        lines.append(f"  storage {storage['used_bytes']} of {storage['quota_bytes']} bytes"
                     + "".join(f"; {k} {v}" for k, v in sorted(storage["concerns"].items())))
    return "\n".join(lines)


def _approval_line(a: dict[str, Any]) -> str:
    return (f"{a['id']}  {a['state']:<8} {a['required_level']:<11} expires {a['expires_at']}"
            f"  {a['summary']}")


def _audit_line(e: dict[str, Any]) -> str:
    return (f"{e['seq']:>6} {e['time']} {e['decision']:<5} {e['actor']:<8} {e['action']} "
            f"{e['target']} — {e['reason']}")


# --- commands ------------------------------------------------------------------


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, then as it was.

    For the daemon's imports: they make a few hundred thousand objects that all
    stay (modules, classes, functions), and the collector, run every 700 new
    objects, traversed them again and again without freeing any: about 20 ms of
    the 240 ms the imports take. Anything cyclic they leave behind is collected
    at the collector's first run afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def cmd_daemon(args: argparse.Namespace, ctx: Ctx | None) -> int:
    config = load_config()
    if config.keystore == "keychain":
        from pacd.vault.keychain import start_backend_discovery

        # While the daemon's modules import below (start-up time, not a choice).
        start_backend_discovery()
    with collector_paused():
        from pacd.daemon import main as daemon_main

    return daemon_main(config)


def cmd_status(args: argparse.Namespace, ctx: Ctx) -> None:
    try:
        status = ctx.client.status()
    except DaemonUnavailable as exc:
        # One JSON document either way: the error document says "reachable": false.
        exc.extra["reachable"] = False
        raise
    ctx.out({"reachable": True, **status}, _status_text)


def cmd_init(args: argparse.Namespace, ctx: Ctx) -> None:
    owner = ctx.client.request("POST", "/v1/owner", {"name": args.name})
    ctx.out(owner, f"owner {owner['name']} created (id {owner['id']}); master key is in the "
                   "keychain. Next: pacd enroll")


def cmd_enroll(args: argparse.Namespace, ctx: Ctx) -> None:
    from pacd.presence.client import register

    label = args.label or ("demo key (software, not secure)" if ctx.demo else "")
    body = {"label": label} if label else {}
    begin = ctx.call("POST", "/v1/owner/credentials/begin", body)
    ctx.say("Enrolling a presence credential.")
    with ctx.authenticator() as device:
        credential = register(begin["publicKey"], begin["origin"], terminal_interaction(ctx),
                              device)
    done = ctx.client.request("POST", "/v1/owner/credentials/complete",
                              {"credential": credential,
                               "registration_id": begin["registration_id"]})
    if "approval_id" in done:
        # A key is already enrolled: this one is added when that key signs for it.
        ctx.out(done, f"not enrolled yet: queued for approval {done['approval_id']} (needs "
                      f"{done['required_level']} by a key that is already enrolled, expires "
                      f"{done['expires_at']}); approve with: pacd approve {done['approval_id']}")
        return
    ctx.out(done, f"enrolled {done['label']} ({done['credential_id'][:16]}…, "
                  f"user verification: {'yes' if done['user_verifying'] else 'no'})")


def _credential_line(c: dict[str, Any]) -> str:
    flag = c.get("software")  # null: pacd cannot tell
    software = "software" if flag is True else "hardware" if flag is False else ""
    return (f"{c['credential_id']}  {c['label']!r} {c['kind']} {c['aaguid']}"
            f"{' ' + software if software else ''}  created {c['created_at']}"
            f"  last used {c['last_used_at'] or 'never'}")


def cmd_credentials(args: argparse.Namespace, ctx: Ctx) -> None:
    if args.credentials_cmd == "list":
        listed = {"credentials": ctx.client.credentials()}
        ctx.out(listed, lambda d: "\n".join(_credential_line(c) for c in d["credentials"])
                or "no presence credentials: run pacd enroll")
        return
    data = ctx.client.remove_credential(args.id)
    ctx.out(data, f"not removed yet: queued for approval {data['approval_id']} (needs "
                  f"{data['required_level']}, expires {data['expires_at']}); approve with: "
                  f"pacd approve {data['approval_id']}")


def cmd_session(args: argparse.Namespace, ctx: Ctx) -> None:
    if args.platform:
        # The daemon runs this ceremony itself; the reader waits for the person.
        ctx.say("Touch the fingerprint reader…" if args.platform == "fprintd"
                else "Confirm with Touch ID…")
        ctx.client.timeout = max(ctx.client.timeout,
                                 ctx.config.platform_presence_timeout_s + 30)
        token = ctx.client.request("POST", "/v1/sessions/platform",
                                   {"method": args.platform, "level": args.level}, auth=False)
        ctx.client.save_token(token)
    else:
        token = ctx.session(args.level)
    shown = {k: token[k] for k in ("level", "expires_at")}
    ctx.out(shown, f"{token['level']} session open until {token['expires_at']}")


def _read_document(path: str) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    if p.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"{path}: not valid TOML: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"{path}: not valid JSON: {exc}") from None


def cmd_container(args: argparse.Namespace, ctx: Ctx) -> None:
    action = args.container_cmd
    if action == "create":
        c = ctx.call("POST", "/v1/containers", _read_document(args.spec))
        ctx.out(c, _container_text)
    elif action == "list":
        data = ctx.client.request("GET", "/v1/containers")
        ctx.out(data, lambda d: "\n".join(
            f"{c['id']}  {c['name']:<16} {c['state']:<8} {len(c['agents'])} agent(s), "
            f"{len(c['plugins'])} plugin(s)" for c in d["containers"]) or "no containers")
    elif action == "show":
        ctx.out(ctx.client.request("GET", f"/v1/containers/{args.id}"), _container_text)
    elif action in ("start", "stop"):
        ctx.out(ctx.call("POST", f"/v1/containers/{args.id}/{action}"), _container_text)
    elif action == "rm":
        data = ctx.call("DELETE", f"/v1/containers/{args.id}")
        ctx.out(data, f"container {data['id']} deleted")
    elif action == "config":
        ctx.out(ctx.client.request("GET", f"/v1/containers/{args.id}/config"))
    elif action == "openapi":
        ctx.out(ctx.client.request("GET", f"/v1/containers/{args.id}/openapi"))


def cmd_plugin(args: argparse.Namespace, ctx: Ctx) -> None:
    if args.plugin_cmd == "list":
        listed = ctx.client.request("GET", f"/v1/containers/{args.id}/plugins")
        ctx.out(listed, "\n".join(
            f"{_plugin_title(p)} for {p['agent']}: {p['state']}"
            + (f" ({p['reason']})" if p["reason"] else "") for p in listed["plugins"])
            or "no plugins")
        return
    if args.plugin_cmd == "remove":
        gone = ctx.call("DELETE", f"/v1/containers/{args.id}/plugins/"
                                  f"{urllib.parse.quote(args.name, safe='')}")
        ctx.out(gone, f"uninstalled {gone['plugin_id']} (agents: {', '.join(gone['agents'])})")
        return
    schema = _read_document(args.schema)
    body: dict[str, Any] = {"agent": args.agent, "schema": schema}
    if args.image:
        body["image"] = args.image
    data = ctx.call("POST", f"/v1/containers/{args.id}/plugins", body)
    ctx.out(data, f"queued for approval: {data['approval_id']} (needs {data['required_level']}"
                  f", expires {data['expires_at']}); approve with: pacd approve "
                  f"{data['approval_id']}")


def _open_stream(ctx: Ctx, method: str, path: str, body: Any) -> Iterator[dict[str, Any]]:
    """:meth:`Ctx.call` for an answer streamed as JSON lines: the request is refused
    (or accepted) before any line arrives, so the ceremony-and-retry happens there."""
    return ctx.with_session(lambda: ctx.client.stream(method, path, body))


def cmd_image(args: argparse.Namespace, ctx: Ctx) -> None:
    from pacd.client import stream_error

    body = {"base_image": args.base} if args.base else {}
    ctx.say(f"building the image for {args.id}…")
    log: list[str] = []
    for item in _open_stream(ctx, "POST", f"/v1/containers/{args.id}/image", body):
        kind = item.get("type")
        if kind == "progress":
            line = str(item.get("line", ""))
            log.append(line)
            if not ctx.json:
                print(line, flush=True)  # as it happens, not when the build ends
        elif kind == "error":
            raise stream_error(item)
        elif kind == "done":
            image = str(item.get("image", ""))
            if ctx.json:
                ctx.out({"image": image, "log": log})
            elif not log or log[-1] != f"built {image}":
                print(f"built {image}")
            return
    raise DaemonUnavailable("the daemon ended the build stream without a result (was it "
                            "stopped?); the image may not have been built")


def _write_output(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temp file, then a rename)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InvalidRequest(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_export(args: argparse.Namespace, ctx: Ctx) -> None:
    data = ctx.call("GET", f"/v1/containers/{args.id}/kube")
    text = str(data["yaml"])
    if args.output and args.output != "-":
        _write_output(args.output, text)
        ctx.out({"file": args.output, "bytes": len(text.encode())},
                f"wrote Kubernetes YAML for {args.id} to {args.output}")
    elif ctx.json:
        ctx.out(data)
    else:
        sys.stdout.write(text)


def cmd_approvals(args: argparse.Namespace, ctx: Ctx) -> None:
    data = ctx.client.request("GET", "/v1/approvals")
    ctx.out(data, lambda d: "\n".join(_approval_line(a) for a in d["approvals"])
            or "no approvals")


def cmd_approve(args: argparse.Namespace, ctx: Ctx) -> None:
    detail = ctx.client.request("GET", f"/v1/approvals/{args.id}")
    if args.credential_json:
        credential = _read_document(args.credential_json)
    else:
        from pacd.client import approval_challenge_matches
        from pacd.presence.client import authenticate

        if detail["state"] != "pending":
            raise InvalidRequest(f"approval {args.id} is {detail['state']}, not pending")
        if detail.get("publicKey") is None:
            raise InvalidRequest("no presence credential is enrolled: run pacd enroll")
        if not approval_challenge_matches(detail):
            raise InvalidRequest(
                f"approval {args.id}: the challenge the daemon asks you to sign is not the "
                "SHA-256 of the payload it shows; refusing to sign")
        ctx.say(f"You are approving: {detail['summary']}")
        ctx.say(json.dumps(detail["payload"], indent=2, sort_keys=True))
        with ctx.authenticator() as device:
            credential = authenticate(detail["publicKey"], detail["origin"],
                                      terminal_interaction(ctx), device)
    done = ctx.client.request("POST", f"/v1/approvals/{args.id}/approve",
                              {"credential": credential})
    ctx.out(done, f"approval {done['id']}: {done['state']}")


def cmd_deny(args: argparse.Namespace, ctx: Ctx) -> None:
    body = {"reason": args.reason} if args.reason else {}
    done = ctx.client.request("POST", f"/v1/approvals/{args.id}/deny", body)
    ctx.out(done, f"approval {done['id']}: {done['state']}")


def cmd_audit(args: argparse.Namespace, ctx: Ctx) -> None:
    if args.audit_cmd == "tail":
        after = args.after
        if after is None:
            # The last N entries: find the head from the newest page.
            head = ctx.client.request("POST", "/v1/audit/verify")
            after = max(0, int(head["entries"]) - args.limit)
        data = ctx.client.request("GET", f"/v1/audit?after={after}&limit={args.limit}")
        ctx.out(data, lambda d: "\n".join(_audit_line(e) for e in d["entries"])
                or "no entries")
        return
    if args.audit_cmd == "reanchor":
        accepted = ctx.client.request("POST", "/v1/audit/reanchor")
        ctx.out(accepted, f"re-anchor requested: approval {accepted['approval_id']} needs "
                f"{accepted['required_level']}; `pacd approve {accepted['approval_id']}` "
                "shows what was found and runs the ceremony")
        return
    result = ctx.client.request("POST", "/v1/audit/verify")
    if result["ok"]:
        ctx.out(result, f"audit log ok: {result['entries']} entries verified")
        return
    if ctx.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    raise IntegrityError(
        f"audit log verification FAILED at entry {result['first_bad_seq']}: "
        f"{result.get('problem') or 'the chain is broken'}")


def cmd_doctor(args: argparse.Namespace, ctx: Ctx) -> int:
    from pacd.doctor import run_checks

    checks = run_checks(ctx.config)
    failed = any(c["status"] == "fail" for c in checks)
    ctx.out({"ok": not failed, "checks": checks}, lambda d: "\n".join(
        f"[{c['status']:>4}] {c['name']}: {c['detail']}"
        + (f"\n       fix: {c['fix']}" if c.get("fix") else "") for c in d["checks"]))
    return 1 if failed else 0


# --- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine output (one JSON document)")
    common.add_argument("--demo", action="store_true", default=argparse.SUPPRESS,
                        help="prove presence with the demo authenticator, a software key "
                             "(NOT secure; only when the daemon allows it)")
    parser = argparse.ArgumentParser(prog="pacd", parents=[common],
                                     description="personal AI containers behind owner presence")
    parser.add_argument("--version", action="version", version=f"pacd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    add("daemon", cmd_daemon, "run the daemon in the foreground")
    add("status", cmd_status, "is the daemon running, and what state it is in")
    add("init", cmd_init, "create the owner identity and master key").add_argument(
        "--name", required=True)
    add("enroll", cmd_enroll, "enrol a presence credential (security key)").add_argument(
        "--label", help="a name for this key")
    creds = add("credentials", cmd_credentials,
                "the enrolled presence credentials; removing one is an approval")
    crsub = creds.add_subparsers(dest="credentials_cmd", required=True, metavar="ACTION")
    crsub.add_parser("list", parents=[common], help="list them (id, label, AAGUID, use)")
    crsub.add_parser("remove", parents=[common],
                     help="queue a key's removal (approved with carbonProof; never the last)"
                     ).add_argument("id", help="the credential id as listed")
    session = add("session", cmd_session, "prove presence now and cache the session token")
    session.add_argument("--level", choices=("enhanced", "biometric"), default="biometric")
    session.add_argument("--platform", choices=PLATFORM_PRESENCE_METHODS,
                         help="let the daemon verify you with this machine's fingerprint "
                              "reader (fprintd, or Touch ID on a Mac; enable with "
                              "platform_presence in config.toml)")

    cont = add("container", cmd_container, "create and manage containers")
    csub = cont.add_subparsers(dest="container_cmd", required=True, metavar="ACTION")
    csub.add_parser("create", parents=[common], help="create from a JSON/TOML spec"
                    ).add_argument("spec")
    csub.add_parser("list", parents=[common], help="list containers")
    for verb, text in (("show", "details"), ("start", "start its agents"),
                       ("stop", "stop its agents"), ("rm", "delete it"),
                       ("config", "the seed's container-config JSON"),
                       ("openapi", "OpenAPI document for it and its plugins")):
        csub.add_parser(verb, parents=[common], help=text).add_argument("id")

    plug = add("plugin", cmd_plugin, "submit a plugin for approval")
    psub = plug.add_subparsers(dest="plugin_cmd", required=True, metavar="ACTION")
    submit = psub.add_parser("submit", parents=[common], help="validate and queue a plugin")
    submit.add_argument("id")
    submit.add_argument("schema")
    submit.add_argument("--agent", required=True)
    submit.add_argument("--image", metavar="REF",
                        help="the plugin's image, in local Podman storage (never pulled)")
    listing = psub.add_parser("list", parents=[common], help="plugins and their state")
    listing.add_argument("id")
    remove = psub.add_parser("remove", parents=[common], help="uninstall a plugin")
    remove.add_argument("id")
    remove.add_argument("name", help="the plugin's id or name")

    image = add("image", cmd_image, "container images")
    isub = image.add_subparsers(dest="image_cmd", required=True, metavar="ACTION")
    build = isub.add_parser("build", parents=[common],
                            help="build the owner's image (progress as it happens)")
    build.add_argument("id")
    build.add_argument("--base", metavar="IMAGE",
                       help="the base image; must already be in local Podman storage "
                            "(default: base_image from the daemon's config)")

    export = add("export", cmd_export, "export a container")
    esub = export.add_subparsers(dest="export_cmd", required=True, metavar="FORMAT")
    kube = esub.add_parser("kube", parents=[common], help="Kubernetes YAML")
    kube.add_argument("id")
    kube.add_argument("-o", "--output", metavar="FILE",
                      help="write the YAML to FILE (default: standard output)")

    add("approvals", cmd_approvals, "pending and recent approvals")
    approve = add("approve", cmd_approve, "approve (runs the presence ceremony)")
    approve.add_argument("id")
    approve.add_argument("--credential-json", metavar="FILE",
                         help="post this AuthenticationResponseJSON instead of running the "
                              "ceremony (made over the approval's challenge)")
    deny = add("deny", cmd_deny, "deny a pending approval")
    deny.add_argument("id")
    deny.add_argument("--reason")

    audit = add("audit", cmd_audit, "read or verify the audit log")
    asub = audit.add_subparsers(dest="audit_cmd", required=True, metavar="ACTION")
    tail = asub.add_parser("tail", parents=[common], help="the latest entries")
    tail.add_argument("--after", type=int, default=None, help="entries after this seq")
    tail.add_argument("--limit", type=int, default=20)
    asub.add_parser("verify", parents=[common], help="verify the chain and checkpoint")
    asub.add_parser("reanchor", parents=[common],
                    help="ask to trust the log as it stands after its checkpoint was lost "
                         "or failing (a carbonProof approval)")

    add("doctor", cmd_doctor, "check every dependency and say how to fix it")
    return parser


def _fail(exc: PacdError, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps(exc.to_wire()))
    print(f"pacd: {exc.message}", file=sys.stderr)
    if isinstance(exc, InvalidRequest) and len(exc.errors) > 1:
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
    raise SystemExit(exc.exit_code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        if args.fn is cmd_daemon:
            return int(cmd_daemon(args, None))
        ctx = Ctx(args)
        result = args.fn(args, ctx)
        return int(result) if isinstance(result, int) else 0
    except PacdError as exc:
        _fail(exc, as_json)
    except KeyboardInterrupt:
        print("pacd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
