// The Live tab's AudioWorklet (loaded by live.js with audioWorklet.addModule): the
// microphone's float32 samples, mixed to mono, resampled from the AudioContext's rate to
// processorOptions.rate (a plain average of the input samples in each output sample's span:
// a box low-pass that keeps a downsampled microphone from aliasing), as PCM16 little-endian,
// posted to the page in chunks of processorOptions.chunkMs (an ArrayBuffer each, transferred).
// A "flush" message posts what is buffered, then "flushed". Its output is silence.
"use strict";

class PcmSender extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.rate = opts.rate || 24000;
    this.step = sampleRate / this.rate; // input samples per output sample (>= 1)
    this.size = Math.max(1, Math.round((this.rate * (opts.chunkMs || 100)) / 1000));
    this.fresh();
    this.sum = 0;
    this.count = 0;
    this.pos = 0;
    this.port.onmessage = (e) => {
      if (e.data === "flush") {
        this.post();
        this.port.postMessage("flushed");
      }
    };
  }

  fresh() {
    this.buffer = new ArrayBuffer(this.size * 2);
    this.view = new DataView(this.buffer);
    this.fill = 0;
  }

  post() {
    if (this.fill === 0) return;
    const out = this.buffer.slice(0, this.fill * 2);
    this.port.postMessage(out, [out]);
    this.fresh();
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const first = channels[0], n = channels.length;
      for (let i = 0; i < first.length; i++) {
        let x = first[i];
        for (let c = 1; c < n; c++) x += channels[c][i];
        this.sum += x / n;
        this.count += 1;
        this.pos += 1;
        if (this.pos >= this.step) {
          this.pos -= this.step;
          const v = Math.max(-1, Math.min(1, this.sum / this.count));
          this.view.setInt16(this.fill * 2, Math.round(v < 0 ? v * 32768 : v * 32767), true);
          this.fill += 1;
          this.sum = 0;
          this.count = 0;
          if (this.fill === this.size) this.post();
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-sender", PcmSender);
