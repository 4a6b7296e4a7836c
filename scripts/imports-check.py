#!/usr/bin/env python3
"""Every target declares exactly the modules its sources import (Package.swift), no more, no
fewer: an import that only works because another dependency brings the module along breaks
when that dependency changes, and a declared module nobody imports only costs build time."""
import glob, json, os, re, subprocess, sys

os.chdir(os.path.join(os.path.dirname(__file__), '..'))
# The platform's own modules, which no manifest declares.
SYSTEM = {'Foundation', 'FoundationEssentials', 'FoundationNetworking', 'Dispatch', 'Glibc', 'Musl',
          'Darwin', 'Android', 'Testing', 'XCTest', 'Synchronization', '_Concurrency', 'os'}
IMPORT = re.compile(r'^\s*(?:@[\w()]+\s+)*import\s+(?:(?:struct|class|enum|protocol|func|typealias|var|let)\s+)?([A-Za-z_][\w]*)', re.M)

def dump(env=None):
    out = subprocess.run(['swift', 'package', 'dump-package'], capture_output=True, text=True, check=True,
                         env=dict(os.environ, **(env or {})))
    return json.loads(out.stdout)

problems = []
for package in (dump(), dump({'SWITCHBOARD_FUZZ': '1'})):
    for target in package['targets']:
        name = target['name']
        kind = target['type']
        path = target.get('path') or os.path.join('Tests' if kind == 'test' else 'Sources', name)
        declared = set()
        for dependency in target['dependencies']:
            for key in ('byName', 'target', 'product'):
                if key in dependency:
                    declared.add(dependency[key][0])
        imported = set()
        for source in glob.glob(os.path.join(path, '**', '*.swift'), recursive=True):
            imported |= set(IMPORT.findall(open(source, encoding='utf-8').read()))
        imported -= SYSTEM | {name}
        missing, unused = sorted(imported - declared), sorted(declared - imported)
        if missing: problems.append(f'{name}: imports {", ".join(missing)} without declaring it')
        if unused: problems.append(f'{name}: declares {", ".join(unused)} but imports none of it')

for problem in sorted(set(problems)):
    print('imports-check:', problem)
if problems:
    sys.exit(1)
print('imports-check: every target declares exactly what it imports')
