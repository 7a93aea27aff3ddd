// voxloop's audio worklet: one processor does both directions, on the audio thread.
//
// Capture: the microphone (input 0) is cut into 20 ms frames, converted to PCM16 and posted to
// the page, which sends each as one binary WebSocket message. The samples captured so far are
// the tab's stream clock (the server counts the same samples as they arrive).
//
// Playback: the agent's voice arrives as PCM16 at `outRate` (16 kHz); it waits in a ring
// buffer (the jitter buffer: playout starts once `prebufferMs` are queued, or at once after a
// "flush") and is resampled to the context's rate by linear interpolation. A clear drops the
// queue at the next render quantum; pause holds it. After every microphone frame the
// processor reports what it really played: samples played (at outRate), its position in the
// audio received, the stream time just after its last real sample, and the output's level.

class VoxloopIO extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.outRate || 16000;
    this.frameSize = Math.round(sampleRate / 50);
    this.frame = new Float32Array(this.frameSize);
    this.fill = 0;
    this.captured = 0; // microphone samples put in frames: the stream clock, at sampleRate
    this.cap = this.outRate * 8;
    this.ring = new Float32Array(this.cap);
    this.received = 0; // agent samples received (outRate)
    this.readPos = 0; // fractional read position in the received stream
    this.played = 0; // real samples played
    this.step = this.outRate / sampleRate;
    this.prebuffer = Math.round(((opts.prebufferMs || 20) / 1000) * this.outRate);
    this.playing = false;
    this.paused = false;
    this.flushed = false;
    this.waited = 0; // quanta since audio arrived while not playing
    this.lastEnd = null; // stream seconds after the last real sample
    this.sumSq = 0;
    this.level = 0;
    this.marks = []; // [stream index, turn]: tell the page when a turn's audio starts
    this.underruns = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "audio") {
      const pcm = new Int16Array(msg.pcm);
      if (msg.turn !== undefined && msg.turn !== null) this.marks.push([this.received, msg.turn]);
      for (let i = 0; i < pcm.length; i++) {
        this.ring[(this.received + i) % this.cap] = pcm[i] / 32768;
      }
      this.received += pcm.length;
      if (this.received - this.readPos > this.cap) this.readPos = this.received - this.cap;
    } else if (msg.type === "clear") {
      this.readPos = this.received;
      this.playing = false;
      this.flushed = false;
      this.marks = [];
      this.port.postMessage({ type: "cleared", id: msg.id, played: this.played });
    } else if (msg.type === "pause") {
      this.paused = true;
    } else if (msg.type === "resume") {
      this.paused = false;
    } else if (msg.type === "flush") {
      this.flushed = true;
    }
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    const out = outputs[0][0];
    const n = out ? out.length : 128;
    // stream position of this quantum's first sample (the frame being filled included)
    const start = this.captured + this.fill;
    // -- playback
    const queued = this.received - this.readPos;
    if (!this.playing && queued > 0) {
      this.waited++;
      if (queued >= this.prebuffer || this.flushed || this.waited * 128 > sampleRate * 0.06) {
        this.playing = true;
      }
    }
    for (let i = 0; i < n; i++) {
      let s = 0;
      if (this.playing && !this.paused && this.readPos < this.received) {
        const idx = Math.floor(this.readPos);
        const frac = this.readPos - idx;
        const s0 = this.ring[idx % this.cap];
        const s1 = idx + 1 < this.received ? this.ring[(idx + 1) % this.cap] : s0;
        s = s0 + (s1 - s0) * frac;
        const next = this.readPos + this.step;
        const crossed = Math.floor(Math.min(next, this.received)) - idx;
        if (crossed > 0) {
          this.played += crossed;
          while (this.marks.length && this.marks[0][0] <= idx) {
            this.port.postMessage({ type: "started", turn: this.marks[0][1], frame: currentFrame + i });
            this.marks.shift();
          }
        }
        this.readPos = Math.min(next, this.received);
        this.lastEnd = (start + i + 1) / sampleRate;
      }
      if (out) out[i] = s;
      this.sumSq += s * s;
    }
    if (this.playing && this.readPos >= this.received) {
      if (!this.flushed) this.underruns++; // ran dry mid-answer (not its end)
      this.playing = false;
      this.flushed = false;
      this.waited = 0;
    }
    if (!this.playing) this.waited = queued > 0 ? this.waited : 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    // -- capture (no input yet: silence, so the stream clock keeps time)
    for (let i = 0; i < n; i++) {
      this.frame[this.fill++] = input ? input[i] : 0;
      if (this.fill === this.frameSize) {
        this.fill = 0;
        this.captured += this.frameSize;
        this.sendFrame();
      }
    }
    return true;
  }

  sendFrame() {
    const pcm = new Int16Array(this.frameSize);
    let micSq = 0;
    for (let i = 0; i < this.frameSize; i++) {
      const v = Math.max(-1, Math.min(1, this.frame[i]));
      pcm[i] = v < 0 ? v * 32768 : v * 32767;
      micSq += v * v;
    }
    const rms = Math.sqrt(this.sumSq / this.frameSize) * 32768;
    this.sumSq = 0;
    this.level = Math.max(rms, this.level * 0.7);
    this.port.postMessage(
      {
        type: "frame",
        pcm: pcm.buffer,
        micLevel: Math.sqrt(micSq / this.frameSize),
        played: this.played,
        pos: Math.floor(this.readPos),
        end: this.lastEnd,
        level: this.level,
        queued: this.received - this.readPos,
        underruns: this.underruns,
      },
      [pcm.buffer],
    );
  }
}

registerProcessor("voxloop-io", VoxloopIO);
