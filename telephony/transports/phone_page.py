"""The `/phone` page: a call button, a keypad and the call's events, talking WebRTC to voicegate (webrtc.py)."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>voicegate phone</title>
<style>
 body { font: 15px system-ui, sans-serif; max-width: 44em; margin: 2em auto; }
 input, button { font: inherit; padding: .3em .6em; }
 #keys button { width: 2.6em; }
 #events { background: #f4f4f4; padding: .6em; height: 22em; overflow: auto; font-family: monospace; }
 .say { color: #05a; } .barge { color: #a50; } .end { color: #a00; }
</style></head>
<body>
<h1>voicegate phone</h1>
<p><label>Number <input id="to" value="demo" size="12"></label>
 <button id="call">Call</button> <button id="hangup" disabled>Hang up</button> <span id="state">idle</span></p>
<p id="keys"></p>
<div id="events"></div>
<audio id="remote" autoplay></audio>
<script>
const $ = (id) => document.getElementById(id);
let pc = null, ws = null;
"123456789*0#".split("").forEach((d) => {
  const b = document.createElement("button"); b.textContent = d;
  b.onclick = () => ws && ws.send(JSON.stringify({type: "dtmf", digit: d})); $("keys").appendChild(b);
});
function show(text, cls) {
  const line = document.createElement("div"); line.textContent = text; if (cls) line.className = cls;
  $("events").appendChild(line); $("events").scrollTop = 1e9;
}
function describe(ev) {
  if (ev.name === "agent_say") return ["agent: " + ev.text, "say"];
  if (ev.name === "barge_in" || ev.name === "barge_in_paused") return [ev.name.replace(/_/g, " "), "barge"];
  if (ev.name === "call_end") return ["call ended: " + ev.reason, "end"];
  if (ev.name === "dtmf") return ["key " + ev.digit, ""];
  return [ev.name + (ev.text ? ": " + ev.text : ""), ""];
}
const LOOPBACK = ["127.0.0.1", "localhost", "[::1]"].includes(location.hostname);
function offerSdp() {  // a phone served on loopback offers only loopback candidates, as the server does
  const sdp = pc.localDescription.sdp;
  if (!LOOPBACK) return sdp;
  return sdp.split("\r\n").filter((l) => !l.startsWith("a=candidate:") || / (127\.0\.0\.1|::1) /.test(l))
    .join("\r\n");
}
async function call() {
  $("call").disabled = true; $("state").textContent = "calling";
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  pc = new RTCPeerConnection({iceServers: []});
  mic.getTracks().forEach((t) => pc.addTrack(t, mic));
  pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((ok) => {
    if (pc.iceGatheringState === "complete") return ok();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && ok();
  });
  const url = new URL("phone/ws", location.href); url.protocol = url.protocol.replace("http", "ws");
  url.search = location.search; ws = new WebSocket(url);
  ws.onopen = () => ws.send(JSON.stringify({type: "call", to: $("to").value, sdp: offerSdp()}));
  ws.onmessage = async (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "answer") {
      await pc.setRemoteDescription({type: "answer", sdp: msg.sdp});
      $("state").textContent = "in call with " + msg.agent; $("hangup").disabled = false;
    } else if (msg.type === "event") { const [t, c] = describe(msg); show(t, c); }
    else if (msg.type === "error") { show("error: " + msg.error, "end"); }
  };
  ws.onclose = () => end();
}
function end() {
  if (pc) pc.close(); pc = null; if (ws) ws.close(); ws = null;
  $("call").disabled = false; $("hangup").disabled = true; $("state").textContent = "idle";
}
$("call").onclick = () => call().catch((e) => { show("error: " + e, "end"); end(); });
$("hangup").onclick = () => { ws && ws.send(JSON.stringify({type: "hangup"})); end(); };
</script>
</body></html>
"""
