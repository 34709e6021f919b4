"""Scripts that cannot run still give a JUnit report: one failed test case each, their file:line errors as the
failure message (`voicegate simulate` exits 2 before it dials)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from telephony.simulator import simulate


def test_invalid_scripts_are_failed_junit_cases(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - wait_speech: {timeout_s: -1}\n  - dance: {}\n")
    untargeted = tmp_path / "untargeted.yaml"
    untargeted.write_text("name: y\nsteps:\n  - hangup: {}\n")
    good = tmp_path / "good.yaml"
    good.write_text("name: z\ntarget: sip:echo@127.0.0.1:9\nsteps:\n  - hangup: {}\n")
    out = tmp_path / "j.xml"
    assert simulate.main([str(bad), str(untargeted), str(good)], None, str(out), None) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: steps.0" in err and "2 script(s) with errors, nothing run" in err, err
    suites = ET.parse(out).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == [str(bad), str(untargeted)]
    cases = [c for s in suites for c in s.iter("testcase")]
    assert [c.get("name") for c in cases] == ["00 script", "00 script"]
    bad_msg, untargeted_msg = (c.find("failure").get("message") for c in cases)
    lines = bad_msg.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{bad}:3: steps.0") and lines[1].startswith(f"{bad}:4: steps.1")
    assert untargeted_msg == f"{untargeted}: no target: give --target or `target:` in the script"
    assert all(s.get("failures") == "1" for s in suites)
