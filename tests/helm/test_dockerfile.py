#!/usr/bin/python3
"""Keeps the Dockerfile honest without a Docker engine.

- The build stage installs exactly scripts/setup's BUILD_PACKAGES, the runtime stage exactly its
  RUNTIME_PACKAGES (one list each, compared as sets: order and line breaks are free).
- The stages are debian:12 / debian:12-slim; the image runs as uid 10001 (the chart's runAsUser),
  with ENTRYPOINT ["dedup-worker"] and CMD ["run"], and builds with the release preset.
- With --binary (ctest passes the built dedup-worker): every shared library the binary links
  directly (ELF NEEDED) comes from a RUNTIME_PACKAGES package or from the base image, and every
  RUNTIME_PACKAGES library package is actually loaded by it - the list is complete and minimal.

    tests/helm/test_dockerfile.py [--root REPO] [--binary build/release/worker/dedup-worker]

Prints one line per check, then "N passed, N failed"; exits 1 when anything failed.
"""

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from checks import Results, expect

HERE = Path(__file__).resolve().parent
# In every debian:12-slim image (Priority: required, or required by apt/dpkg themselves).
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
# Runtime packages that provide no library but data the worker needs (TLS trust store).
DATA_PACKAGES = {"ca-certificates"}


def bash_array(setup_text, name):
    """The words of NAME=( ... ) in a bash script, comments dropped."""
    m = re.search(rf"^{name}=\((.*?)^\)", setup_text, re.S | re.M)
    if not m:
        raise AssertionError(f"scripts/setup has no {name}=( ... ) array")
    words = []
    for line in m.group(1).splitlines():
        words += shlex.split(line, comments=True)
    return words


def dockerfile_stages(text):
    """[(from-line, [apt packages], [instructions])] per stage; continuation lines joined."""
    text = re.sub(r"\\\n", " ", text)
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append((rest, [], []))
            continue
        if not stages:
            continue
        stages[-1][2].append((instr, rest))
        if instr == "RUN":
            for cmd in re.split(r"&&|;", rest):
                words = shlex.split(cmd)
                if words[:2] == ["apt-get", "install"]:
                    stages[-1][1].extend(w for w in words[2:] if not w.startswith("-"))
    return stages


def same_set(kind, got, want):
    expect(len(got) == len(set(got)), f"{kind}: duplicates in the Dockerfile list")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    expect(not missing and not extra, f"{kind}: missing {missing}, not in scripts/setup {extra}")


def package_of(path):
    proc = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # /lib is a symlink to /usr/lib on Debian 12 (merged /usr); dpkg knows one spelling.
        alt = path[4:] if path.startswith("/usr/") else "/usr" + path
        proc = subprocess.run(["dpkg", "-S", alt], capture_output=True, text=True, check=False)
    expect(proc.returncode == 0, f"no Debian package owns {path}")
    return proc.stdout.split(":")[0].strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent.parent)
    parser.add_argument("--binary", type=Path, help="built dedup-worker to check RUNTIME_PACKAGES against")
    args = parser.parse_args()
    root = args.root.resolve()
    results = Results()

    setup = (root / "scripts/setup").read_text(encoding="utf-8")
    build_pkgs = bash_array(setup, "BUILD_PACKAGES")
    runtime_pkgs = bash_array(setup, "RUNTIME_PACKAGES")
    stages = dockerfile_stages((root / "Dockerfile").read_text(encoding="utf-8"))

    results.check("two stages: debian:12 build, debian:12-slim runtime",
                  lambda: expect([s[0].split()[0] for s in stages] == ["debian:12", "debian:12-slim"],
                                 f"stages {[s[0] for s in stages]}"))
    results.check("build stage installs exactly BUILD_PACKAGES", same_set, "build", stages[0][1], build_pkgs)
    results.check("runtime stage installs exactly RUNTIME_PACKAGES", same_set, "runtime", stages[-1][1], runtime_pkgs)

    def runtime_shape():
        instrs = stages[-1][2]
        last = {}
        for instr, rest in instrs:
            last[instr] = rest
        expect(last.get("USER", "").split(":")[0] == "10001", "runtime USER is not 10001")
        expect(json.loads(last["ENTRYPOINT"]) == ["dedup-worker"], "ENTRYPOINT")
        expect(json.loads(last["CMD"]) == ["run"], "CMD")
        expect(any(i == "COPY" and "--from=build" in r for i, r in instrs), "binary not copied from the build stage")
        expect(not any(i == "VOLUME" for i, _ in instrs), "a VOLUME would need a writable path outside /tmp")
        expect("9464" in last.get("EXPOSE", ""), "metrics port not exposed")
    results.check("runtime stage: uid 10001, ENTRYPOINT/CMD, copied binary", runtime_shape)

    def build_shape():
        runs = " ".join(r for i, r in stages[0][2] if i == "RUN")
        expect("cmake --preset release" in runs and "cmake --build --preset release" in runs, "release preset")
    results.check("build stage uses the release preset", build_shape)

    def apt_cache_knows():
        for pkg in runtime_pkgs:
            proc = subprocess.run(["apt-cache", "show", "--no-all-versions", pkg], capture_output=True,
                                  text=True, check=False)
            expect(proc.returncode == 0 and f"Package: {pkg}" in proc.stdout, f"apt-cache does not know {pkg}")
    results.check("every RUNTIME_PACKAGES name is a Debian package", apt_cache_knows)

    if args.binary is not None:
        def binary_libraries():
            binary = args.binary
            expect(binary.is_file(), f"{binary} does not exist (build it first)")
            dyn = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
            needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dyn)
            ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
            resolved = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
            expect(all(n in resolved for n in needed), f"unresolved libraries: {set(needed) - set(resolved)}")
            direct = {package_of(resolved[n]) for n in needed}
            loaded = {package_of(p) for p in resolved.values()}
            allowed = set(runtime_pkgs) | BASE_IMAGE_PACKAGES
            expect(direct <= allowed, f"linked but not in RUNTIME_PACKAGES: {sorted(direct - allowed)}")
            unused = set(runtime_pkgs) - DATA_PACKAGES - loaded
            expect(not unused, f"in RUNTIME_PACKAGES but not loaded by the binary: {sorted(unused)}")
        results.check(f"RUNTIME_PACKAGES match {args.binary.name}'s shared libraries", binary_libraries)

    print(f"{results.passed} passed, {results.failed} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
