// voxloop's page: microphone in, the agent's voice out, the conversation on screen.
// Plain JavaScript, no framework, nothing fetched from elsewhere. The protocol is described
// in plugins/web/protocol.py.
"use strict";

const PROTOCOL_VERSION = 1;
const $ = (id) => document.getElementById(id);

const stats = {
  framesSent: 0, reportsSent: 0, audioMessages: 0, audioSamples: 0, clears: 0, played: 0,
  underruns: 0, queued: 0, state: "not started", states: [], closed: null, errors: [],
};
window.voxloop = { stats };

let ws = null;
let ctx = null;
let node = null;
let stream = null;
let stopping = false;
let pendingTurn = null;
const recvWall = new Map();
const agentLines = new Map();

function wallNow() {
  return performance.timeOrigin + performance.now();
}

function showError(text) {
  const box = $("messages");
  box.textContent = text;
  box.hidden = false;
  stats.errors.push(text);
}

function setStatus(state) {
  stats.state = state;
  if (stats.states.length < 200 && stats.states[stats.states.length - 1] !== state) {
    stats.states.push(state);
  }
  const el = $("status");
  el.textContent = state;
  el.className = "status " + state.replace(/\s+/g, "-");
}

function addLine(cls, who, turn) {
  const div = document.createElement("div");
  div.className = "line " + cls;
  if (turn !== undefined) div.dataset.turn = String(turn);
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  div.appendChild(name);
  for (const part of ["heard", "unheard", "latency"]) {
    const span = document.createElement("span");
    span.className = part;
    div.appendChild(span);
  }
  $("transcript").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function agentLine(turn) {
  let line = agentLines.get(turn);
  if (!line) {
    line = addLine("agent", "agent", turn);
    line.dataset.text = "";
    agentLines.set(turn, line);
  }
  return line;
}

function ms(value) {
  return value === null || value === undefined ? "–" : Math.round(value) + " ms";
}

function onEvent(msg) {
  switch (msg.type) {
    case "ready":
      startAudio(msg).catch((err) => showError("Could not start the audio: " + err.message));
      break;
    case "config":
      $("echo-note").textContent = msg.echo_guard
        ? "Echo guard on: through speakers the agent ignores sound no louder than its own " +
          "echo, so speak up to interrupt it. With headphones, start the server with " +
          "--no-echo-guard so quiet interruptions count."
        : "Echo guard off: use headphones, or the agent may hear itself and stop.";
      break;
    case "clear":
      stats.clears++;
      node && node.port.postMessage({ type: "clear", id: msg.id });
      break;
    case "pause":
    case "resume":
    case "flush":
      node && node.port.postMessage({ type: msg.type });
      break;
    case "turn":
      pendingTurn = msg.turn;
      break;
    case "state":
      setStatus(msg.state);
      break;
    case "user": {
      const line = addLine("user", "you", msg.turn);
      line.querySelector(".heard").textContent = msg.text;
      break;
    }
    case "agent_text": {
      const line = agentLine(msg.turn);
      line.dataset.text += msg.text;
      line.querySelector(".heard").textContent = line.dataset.text;
      break;
    }
    case "agent_said": {
      const line = agentLine(msg.turn);
      const text = msg.text || line.dataset.text;
      const heard = msg.heard || "";
      const rest = text.startsWith(heard) ? text.slice(heard.length) : "";
      line.querySelector(".heard").textContent = heard;
      line.querySelector(".unheard").textContent = msg.interrupted ? rest : "";
      if (msg.interrupted) {
        line.classList.add("interrupted");
        line.title = "interrupted: the struck-out words were never heard";
      }
      break;
    }
    case "latency": {
      const line = agentLines.get(msg.turn);
      if (!line) break;
      const l = msg.latencies;
      const parts = [
        "voice-to-voice " + ms(l.voice_to_voice),
        "stt " + ms(l.stt),
        "llm " + ms(l.ttft),
        "tts " + ms(l.ttfb),
        "playout " + ms(l.playout),
      ];
      if (l.barge_in_reaction !== null && l.barge_in_reaction !== undefined) {
        parts.push("stopped in " + ms(l.barge_in_reaction));
      }
      line.querySelector(".latency").textContent = parts.join(" · ");
      break;
    }
    case "error":
      showError(msg.message);
      break;
    default:
      break;
  }
}

function onAudio(data) {
  stats.audioMessages++;
  stats.audioSamples += data.byteLength / 2;
  if (!node) return;
  const message = { type: "audio", pcm: data, turn: null };
  if (pendingTurn !== null) {
    message.turn = pendingTurn;
    recvWall.set(pendingTurn, wallNow());
    pendingTurn = null;
  }
  node.port.postMessage(message, [data]);
}

function outputLatency() {
  return ctx ? (ctx.baseLatency || 0) + (ctx.outputLatency || 0) : 0;
}

function onWorklet(msg) {
  if (msg.type === "frame") {
    $("meter").style.width = Math.min(100, Math.round(Math.sqrt(msg.micLevel) * 160)) + "%";
    stats.played = msg.played;
    stats.underruns = msg.underruns;
    stats.queued = msg.queued;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(msg.pcm);
    stats.framesSent++;
    // `end` is when the last sample left the worklet; it is audible after the output's latency
    const audible = msg.end === null ? null : msg.end + outputLatency();
    ws.send(JSON.stringify({
      type: "played", played: msg.played, pos: msg.pos, end: audible,
      level: msg.level, latency: outputLatency(), wall: wallNow(),
    }));
    stats.reportsSent++;
  } else if (msg.type === "cleared") {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "cleared", id: msg.id, played: msg.played }));
    }
  } else if (msg.type === "started") {
    const recv = recvWall.get(msg.turn);
    if (recv === undefined || !ctx || !ws || ws.readyState !== WebSocket.OPEN) return;
    recvWall.delete(msg.turn);
    const ts = ctx.getOutputTimestamp();
    const playPerf = ts.performanceTime + (msg.frame / ctx.sampleRate - ts.contextTime) * 1000;
    ws.send(JSON.stringify({
      type: "turn_audio", turn: msg.turn, recv_wall: recv,
      play_wall: performance.timeOrigin + playPerf,
    }));
  }
}

async function startAudio(ready) {
  node = new AudioWorkletNode(ctx, "voxloop-io", {
    numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
    processorOptions: { outRate: ready.sample_rate, prebufferMs: 20 },
  });
  node.port.onmessage = (e) => onWorklet(e.data);
  ctx.createMediaStreamSource(stream).connect(node);
  node.connect(ctx.destination);
  stats.sampleRate = ctx.sampleRate;
  stats.outputLatencyMs = Math.round(outputLatency() * 1000);
  setStatus("listening");
}

function micError(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return "Microphone permission was denied. Allow the microphone for this page (the icon " +
      "in the address bar), then press Start again.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return "No microphone was found. Plug one in (or enable it in the system settings), " +
      "then press Start again.";
  }
  if (name === "NotReadableError") {
    return "The microphone is in use by another program, or the system blocked it. Close " +
      "the other program, then press Start again.";
  }
  return "The microphone could not be opened (" + (err && err.message) + ").";
}

async function start() {
  $("start").disabled = true;
  $("messages").hidden = true;
  stopping = false;
  if (!window.isSecureContext || !navigator.mediaDevices) {
    showError("This page was opened over plain http from another machine, and browsers allow " +
      "the microphone only on https or on localhost. Start the server with --tls-cert and " +
      "--tls-key and open its https:// address, or open the page on the machine that runs it.");
    $("start").disabled = false;
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
               channelCount: 1 },
    });
  } catch (err) {
    showError(micError(err));
    $("start").disabled = false;
    return;
  }
  ctx = new AudioContext({ latencyHint: "interactive" });
  await ctx.resume();
  await ctx.audioWorklet.addModule("/static/worklet.js");
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(scheme + "://" + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  setStatus("connecting");
  ws.onopen = () => {
    ws.send(JSON.stringify({
      type: "hello", version: PROTOCOL_VERSION, sample_rate: ctx.sampleRate, token: token,
    }));
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onEvent(JSON.parse(e.data));
    else onAudio(e.data);
  };
  ws.onclose = (e) => {
    stats.closed = { code: e.code, reason: e.reason };
    if (!stopping) {
      const why = e.reason ? " (" + e.reason + ")" : "";
      showError(e.code === 1000
        ? "The conversation ended" + why + ". Press Start to begin a new one."
        : "The server is gone" + why + ". Restart voxloop web, then reload this page.");
    }
    teardown();
  };
  $("stop").hidden = false;
}

function teardown() {
  if (node) node.disconnect();
  node = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  if (ctx) ctx.close();
  ctx = null;
  ws = null;
  setStatus("ended");
  $("start").disabled = false;
  $("stop").hidden = true;
}

function stop() {
  stopping = true;
  if (ws) ws.close(1000, "the user hung up");
}

window.addEventListener("DOMContentLoaded", () => {
  $("start").addEventListener("click", () => {
    start().catch((err) => {
      showError("Could not start: " + err.message);
      $("start").disabled = false;
    });
  });
  $("stop").addEventListener("click", stop);
});
