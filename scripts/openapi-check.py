#!/usr/bin/env python3
"""Fail when docs/openapi.yaml and the HTTP routes in the Swift sources drift apart.

It needs only the Python 3 standard library.

Code side: every route registration with a literal path in Sources/**/*.swift, such as
`api.post("/publish")`, `router.get("/health")` or `router.on("/x", method: .get)`. A
collection of routes (an `enum X` with `static func add(to NAME: …)`) gets the prefix of the
group it is mounted on, found as `X.add(to: router.group("/api")…)`. A `.group(` the script
does not understand is an error, so that routes are never skipped silently.

Spec side: the `paths:` section of docs/openapi.yaml, read by indentation, with its path keys
and their HTTP method keys.

Both sides are compared as (METHOD, path), with `:param` written as `{param}`. The exit
status is 1 when anything differs, and every mismatch is listed.

Usage: python3 scripts/openapi-check.py [--verbose]
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ROOT / "Sources"
SPEC = ROOT / "docs" / "openapi.yaml"

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Routes in the code that the spec leaves out on purpose, each with the reason.
EXCLUDED = {
    ("POST", "/streams/**"): "open streams for connected clients (docs/operations.md), not the server API",
}

# Routes in the spec whose code may not be in the tree yet. A missing one gets a warning
# instead of a failure. Remove an entry once its route is committed; the script says when.
PENDING: dict = {}

# Files whose routes must be found. If none are found, the patterns below are out of date.
REQUIRED_FILES = ("Switchboard/Routing/ServerAPI.swift", "Switchboard/Routing/HealthRoutes.swift")

ROUTE_CALL = re.compile(
    r"\b(?P<recv>[A-Za-z_]\w*)\s*\.\s*(?P<method>" + "|".join(HTTP_METHODS) + r")\s*\(\s*\"(?P<path>/[^\"]*)\""
)
ON_CALL = re.compile(
    r"\b(?P<recv>[A-Za-z_]\w*)\s*\.\s*on\s*\(\s*\"(?P<path>/[^\"]*)\"\s*,\s*method\s*:\s*\.(?P<method>\w+)"
)
# Receivers that have get/post/trace… methods but are not routers.
NOT_ROUTERS = {"logger", "log", "client", "httpClient"}
MOUNT = re.compile(r"\b(?P<type>[A-Z]\w*)\s*\.\s*add\s*\(\s*to\s*:\s*\w+\s*\.\s*group\s*\(\s*\"(?P<prefix>[^\"]*)\"\s*\)")
GROUP = re.compile(r"\.\s*group\s*\(")
TYPE_DECL = re.compile(r"\b(?:enum|struct|class|extension)\s+(?P<type>[A-Z]\w*)")
ADD_FUNC = re.compile(r"static\s+func\s+add\s*<[^>]*>\s*\(\s*to\s+(?P<param>\w+)\s*:|static\s+func\s+add\s*\(\s*to\s+(?P<param2>\w+)\s*:")


def strip_comments(text: str) -> str:
    """Blank out // and /* */ comments and keep the line breaks. String literals are respected."""
    out, i, n = [], 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            chunk = text[i : (n if j < 0 else j + 2)]
            out.append("\n" * chunk.count("\n"))
            i = n if j < 0 else j + 2
        else:
            if c == '"':
                in_string = True
            out.append(c)
            i += 1
    return "".join(out)


def join_paths(prefix: str, path: str) -> str:
    full = "/" + "/".join(part for part in (prefix + "/" + path).split("/") if part)
    return full


def to_template(path: str) -> str:
    return re.sub(r":(\w+)", r"{\1}", path)


def code_routes(errors: list) -> dict:
    """(METHOD, path) -> "file:line" for every route registration in Sources."""
    files = {p: strip_comments(p.read_text(encoding="utf-8")) for p in sorted(SOURCES.rglob("*.swift"))}

    prefixes = {}  # type name -> group prefix
    mount_spans = {}  # file -> spans of the MOUNT matches, whose .group( calls are understood
    for path, text in files.items():
        for m in MOUNT.finditer(text):
            prefixes.setdefault(m.group("type"), set()).add(m.group("prefix"))
            mount_spans.setdefault(path, []).append(m.span())
    for type_name, found in prefixes.items():
        if len(found) > 1:
            errors.append(f"code: {type_name} is mounted under several prefixes {sorted(found)}; the check cannot tell which is served")

    routes = {}
    found_in = set()
    for path, text in files.items():
        rel = path.relative_to(SOURCES).as_posix()
        # Which route-collection type this file defines, and the receiver its add(to:) gets.
        add_params = [m.group("param") or m.group("param2") for m in ADD_FUNC.finditer(text)]
        types = [m.group("type") for m in TYPE_DECL.finditer(text)]
        prefix = ""
        mounted = [t for t in types if t in prefixes]
        if mounted:
            prefix = next(iter(prefixes[mounted[0]]))

        for g in GROUP.finditer(text):
            if not any(start <= g.start() < end for start, end in mount_spans.get(path, [])):
                line = text.count("\n", 0, g.start()) + 1
                errors.append(f"code: {rel}:{line}: a .group( call this check does not understand; extend scripts/openapi-check.py")

        for pattern in (ROUTE_CALL, ON_CALL):
            for m in pattern.finditer(text):
                method = m.group("method").lower()
                if method not in HTTP_METHODS:
                    continue  # e.g. router.on(…, method: .sub): not HTTP
                recv = m.group("recv")
                if recv in NOT_ROUTERS:
                    continue
                route_prefix = prefix if recv in add_params else ""
                full = to_template(join_paths(route_prefix, m.group("path")))
                line = text.count("\n", 0, m.start()) + 1
                key = (method.upper(), full)
                routes.setdefault(key, f"{rel}:{line}")
                found_in.add(rel)

    for required in REQUIRED_FILES:
        if required not in found_in:
            errors.append(f"code: no routes found in Sources/{required}; the patterns in scripts/openapi-check.py are out of date")
    return routes


def spec_routes(errors: list) -> dict:
    """(METHOD, path) -> "openapi.yaml:line" from the paths: section, read by indentation."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    routes = {}
    try:
        start = next(i for i, l in enumerate(lines) if re.match(r"^paths\s*:\s*(#.*)?$", l))
    except StopIteration:
        errors.append("spec: docs/openapi.yaml has no top-level `paths:`")
        return routes

    path_indent = method_indent = None
    current = None
    for i in range(start + 1, len(lines)):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            break  # the next top-level key
        key_match = re.match(r"^\s*(?:'([^']*)'|\"([^\"]*)\"|([^\s:#][^:#]*?))\s*:(?:\s|$)", line)
        if not key_match:
            continue
        key = next(g for g in key_match.groups() if g is not None)
        if path_indent is None:
            path_indent = indent
        if indent == path_indent:
            if not key.startswith("/"):
                errors.append(f"spec: openapi.yaml:{i + 1}: `{key}` under paths: does not start with /")
            current = key
            method_indent = None
        elif current is not None and indent > path_indent:
            if method_indent is None:
                method_indent = indent
            if indent == method_indent:
                if key == "$ref":
                    errors.append(f"spec: openapi.yaml:{i + 1}: path item $ref is not supported by this check")
                elif key.lower() in HTTP_METHODS:
                    routes.setdefault((key.upper(), current), f"docs/openapi.yaml:{i + 1}")
    if not routes:
        errors.append("spec: no operations found under paths:")
    return routes


def main() -> int:
    verbose = "--verbose" in sys.argv[1:]
    errors = []
    code = code_routes(errors)
    spec = spec_routes(errors)

    warnings = []
    for key, where in sorted(code.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if key in spec:
            continue
        if key in EXCLUDED:
            if verbose:
                warnings.append(f"excluded: {key[0]} {key[1]} ({where}): {EXCLUDED[key]}")
            continue
        errors.append(f"missing from docs/openapi.yaml: {key[0]} {key[1]} (registered at Sources/{where})")
    for key, where in sorted(spec.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if key in code:
            if key in PENDING:
                warnings.append(f"{key[0]} {key[1]} is in the code now ({code[key]}): once that is committed, remove it from PENDING in scripts/openapi-check.py")
            continue
        if key in PENDING:
            warnings.append(f"pending: {key[0]} {key[1]} ({where}) is in the spec but not in the code yet: {PENDING[key]}")
            continue
        errors.append(f"not in the code: {key[0]} {key[1]} (described at {where})")
    for key in sorted(EXCLUDED):
        if key in spec:
            errors.append(f"{key[0]} {key[1]} is both EXCLUDED and described in the spec; drop one")

    if verbose:
        for key in sorted(set(code) & set(spec), key=lambda k: (k[1], k[0])):
            print(f"ok: {key[0]} {key[1]}  ({code[key]}; {spec[key]})")
    for w in warnings:
        print(f"warning: {w}")
    if errors:
        print(f"openapi-check: {len(errors)} mismatch(es) between the Swift routes and docs/openapi.yaml:", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    print(f"openapi-check: {len(set(code) & set(spec))} routes match docs/openapi.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
