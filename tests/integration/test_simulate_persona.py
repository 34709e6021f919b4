"""`voicegate simulate` with an LLM playing the caller: the local chat-completions test server writes the persona's
lines, the gateway's echo agent says them back, and the persona hears (through the ASR) what the agent said."""

from __future__ import annotations

from pathlib import Path

from tests.integration.peers import Gateway
from tests.integration.test_simulate_options import report, run
from tests.servers.llm import LlmServer, text_reply

SCRIPT = """\
name: persona books a table
steps:
  - persona:
      url: {url}
      model: persona-test
      api_key_env: VG_PERSONA_TEST_KEY
      role: a diner called Sam
      goal: book a table for two
      max_turns: 3
      voice: joe
      timeout_s: 1.5
      silence_s: 0.8
  - hangup: {{}}
"""


def test_an_llm_persona_talks_to_the_echo_agent_until_its_goal(gateway: Gateway, workdir: Path):
    """The echo agent says nothing first (a silent turn), then repeats the persona's line; the second request
    carries that line as the agent's words, and the persona's goal mark ends the step once a third request, the
    judge's, finds the goal met in the transcript. Every request goes at temperature 0 with the run's seed."""
    with LlmServer() as llm:
        llm.script(text_reply(["I would like ", "to book a table ", "for two."]),
                   text_reply(["Thank you, goodbye. [GOAL REACHED]"]), text_reply(["Yes."]))
        r = run(workdir, SCRIPT.format(url=llm.base_url), f"sip:echo@127.0.0.1:{gateway.port}",
                "--junit", str(workdir / "j.xml"), "--seed", "41", env={"VG_PERSONA_TEST_KEY": "sekrit"}, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        first, second, judge = llm.requests
    call = report(workdir)
    step = call["steps"][0]
    assert call["seed"] == 41 and ", seed 41" in r.stdout
    assert step["ok"] and step["metrics"]["turns"] == 2, step
    assert step["message"] == "goal reached; the judge found it met in the transcript", step
    assert all(q.body["seed"] == 41 and q.body["temperature"] == 0 for q in (first, second, judge))
    assert "book a table for two" in judge.body["messages"][1]["content"]
    assert step["transcript"] in judge.body["messages"][1]["content"]
    assert first.headers["authorization"] == "Bearer sekrit" and first.body["model"] == "persona-test"
    system, silent = first.body["messages"]
    assert "a diner called Sam" in system["content"] and "book a table for two" in system["content"]
    assert silent == {"role": "user", "content": "(the agent said nothing)"}
    assert second.body["messages"][2] == {"role": "assistant", "content": "I would like to book a table for two."}
    echoed = second.body["messages"][3]
    assert echoed["role"] == "user" and any(w in echoed["content"].lower() for w in ("table", "book")), echoed
    assert step["transcript"].startswith("agent: (the agent said nothing)\ncaller: I would like to book a table")
    assert step["transcript"].endswith("caller: Thank you, goodbye.")
    assert "caller: I would like to book a table for two." in (workdir / "j.xml").read_text()
