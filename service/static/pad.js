// A pad to draw a digit on with a mouse, a pen or a finger; it hands over a PNG.

const SIZE = 280; // drawing pixels; MNIST's 28 x 28, ten times over
const INK = "#14172a";
const PAPER = "#ffffff";

export class DrawPad {
  constructor(canvas, { onStroke }) {
    this.canvas = canvas;
    this.onStroke = onStroke;
    canvas.width = SIZE;
    canvas.height = SIZE;
    this.ctx = canvas.getContext("2d");
    this.empty = true;
    this.last = null;
    this.clear();
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
  }

  clear() {
    this.ctx.fillStyle = PAPER;
    this.ctx.fillRect(0, 0, SIZE, SIZE);
    this.empty = true;
    this.canvas.dataset.empty = "true";
  }

  toBlob() {
    return new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
  }

  at(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * SIZE,
      y: ((event.clientY - rect.top) / rect.height) * SIZE,
    };
  }

  down(event) {
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.last = this.at(event);
    this.mid = this.last;
    // A dot, so that a tap leaves a mark.
    this.ctx.fillStyle = INK;
    this.ctx.beginPath();
    this.ctx.arc(this.last.x, this.last.y, this.width(event) / 2, 0, 2 * Math.PI);
    this.ctx.fill();
    this.empty = false;
    this.canvas.dataset.empty = "false";
  }

  move(event) {
    if (!this.last) return;
    event.preventDefault();
    const point = this.at(event);
    // A quadratic curve through the midpoints keeps fast strokes smooth.
    const mid = { x: (this.last.x + point.x) / 2, y: (this.last.y + point.y) / 2 };
    const ctx = this.ctx;
    ctx.strokeStyle = INK;
    ctx.lineWidth = this.width(event);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(this.mid.x, this.mid.y);
    ctx.quadraticCurveTo(this.last.x, this.last.y, mid.x, mid.y);
    ctx.stroke();
    this.last = point;
    this.mid = mid;
  }

  up(event) {
    if (!this.last) return;
    this.move(event);
    this.last = null;
    this.onStroke();
  }

  width(event) {
    // A pen's pressure thickens the line a little; a mouse reports 0.5 when pressed.
    const pressure = event.pointerType === "pen" && event.pressure ? event.pressure : 0.5;
    return 14 + pressure * 12;
  }
}
