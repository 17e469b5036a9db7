"""Draw the demo model's loss curve (training.json) as a small standalone SVG.

  python3 tools/plot_training.py models/demo/training.json models/demo/loss.svg
"""
import json
import math
import sys


def main(src: str, dst: str):
    with open(src) as f:
        log = json.load(f)
    curve = log["curve"]
    w, h, pad = 640, 320, 48
    xmax = curve[-1]["tokens"]
    losses = [p["train_loss"] for p in curve] + [p["val_loss"] for p in curve if "val_loss" in p]
    ymin, ymax = math.floor(min(losses) * 10) / 10, math.ceil(max(losses) * 2) / 2
    sx = lambda t: pad + (w - 2 * pad) * t / xmax
    sy = lambda l: h - pad - (h - 2 * pad) * (l - ymin) / (ymax - ymin)

    def line(points, color):
        pts = " ".join(f"{sx(t):.1f},{sy(l):.1f}" for t, l in points)
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>']
    for i in range(6):
        y = ymin + (ymax - ymin) * i / 5
        out.append(f'<text x="{pad - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        out.append(f'<line x1="{pad}" y1="{sy(y):.1f}" x2="{w - pad}" y2="{sy(y):.1f}" stroke="#ddd"/>')
    for i in range(5):
        t = xmax * i / 4
        out.append(f'<text x="{sx(t):.1f}" y="{h - pad + 16}" text-anchor="middle">{t / 1e6:.1f}M</text>')
    out.append(line([(p["tokens"], p["train_loss"]) for p in curve], "#1f77b4"))
    out.append(line([(p["tokens"], p["val_loss"]) for p in curve if "val_loss" in p], "#d62728"))
    out.append(f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">training tokens (bytes)</text>')
    out.append(f'<text x="{pad}" y="{pad - 16}">cross-entropy, nats per byte: <tspan fill="#1f77b4">train</tspan>, <tspan fill="#d62728">held-out chapters</tspan>; final held-out {log["final_val_loss"]}</text>')
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
