// A progress bar on stderr: redrawn in place on a TTY, one line per step otherwise.
export class Progress {
  constructor(total, stream = process.stderr) {
    this.total = Math.max(1, total);
    this.done = 0;
    this.stream = stream;
    this.tty = Boolean(stream.isTTY);
    this.started = Date.now();
    this.label = '';
  }

  step(label) {
    this.done = Math.min(this.total, this.done + 1);
    this.show(label);
  }

  /** Shows a label without advancing. */
  show(label) {
    this.label = label;
    const pct = this.done / this.total;
    const secs = Math.round((Date.now() - this.started) / 1000);
    if (this.tty) {
      const width = Math.max(10, Math.min(30, (this.stream.columns ?? 80) - 60));
      const fill = Math.round(pct * width);
      const line = `[${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${String(Math.round(pct * 100)).padStart(3)}% ${secs}s ${label}`;
      this.stream.write(`\r\x1b[2K${line.slice(0, (this.stream.columns ?? 120) - 1)}`);
    } else {
      this.stream.write(`[${String(Math.round(pct * 100)).padStart(3)}% ${secs}s] ${label}\n`);
    }
  }

  /** A line that stays (scrolls above the bar). */
  log(text) {
    if (this.tty) this.stream.write(`\r\x1b[2K${text}\n`);
    else this.stream.write(`${text}\n`);
    if (this.tty && this.label) this.show(this.label);
  }

  end() {
    if (this.tty) this.stream.write('\r\x1b[2K');
  }
}
