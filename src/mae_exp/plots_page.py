"""The `dvc plots show` page: its offline HTML template, and a look at it in headless Chromium.

DVC writes its page from the HTML template that .dvc/config names (`plots.html_template`), which is
.dvc/plots/page.html: SKELETON below with vega, vega-lite and vega-embed inlined from their pinned npm
packages (VENDOR), so the page draws with no network wherever `-o` puts it. Rebuild it after changing
SKELETON or a pin:

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 --pack-destination /tmp/vendor
    python -m mae_exp.plots_page template /tmp/vendor

`python -m mae_exp.plots_page screenshot docs/plots.png` renders `dvc plots show` of the workspace and
photographs it. `look` is what tests/test_plots_page.py checks a page with: every plot drawn, no image
twice, no request beyond the page's own files. See docs/plots.md.

A dev tool, as stage_deps.py: no stage imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import http.server
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(".dvc/plots/page.html")
LICENSES = Path(".dvc/plots/vendor")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    file: str  # the UMD build inside the npm tarball
    sha256: str  # of that file as npm ships it


VENDOR = [
    Package(
        "vega",
        "5.33.1",
        "package/build/vega.min.js",
        "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8",
    ),
    Package(
        "vega-lite",
        "5.23.0",
        "package/build/vega-lite.min.js",
        "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f",
    ),
    Package(
        "vega-embed",
        "6.29.0",
        "package/build/vega-embed.min.js",
        "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da",
    ),
]

# Where the page's story puts each plot, by the id DVC gives its <div> (its name, punctuation -> "_"):
# a section heading opens before the first plot whose id starts with the prefix.
SECTIONS = [
    ("plots_comparison_png", "1. Every recipe against the baseline: every measure"),
    ("pretrain_", "2. Pre-training"),
    ("linear_probe_", "3. Readouts of the frozen encoders (validation split)"),
    ("finetune_", "4. Fine-tuning"),
    ("plots_reconstruction_png", "5. Reconstructions under identical masks"),
]
RAW_PREFIX = "metrics_"  # stage plots: DVCLive's curves under metrics/<stage>/<encoder>/plots/, metrics/curves/

SKELETON = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
{refresh_tag}
<title>MAE pre-training recipes compared</title>
<style>
  body { font-family: sans-serif; margin: 16px; }
  #plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
  #plots > h2, #raw > summary { flex-basis: 100%; margin: 18px 0 0 0; font-size: 1.15em; }
  #plots > div { flex: 0 0 auto; }
  /* DVC's image plots sit in nowrap inline boxes: let them take the page's width and shrink to it */
  #plots > div:has(img) { flex-basis: 100%; white-space: normal !important; }
  #plots > div:has(img) div { display: block !important; }
  #plots img { max-width: 100%; height: auto; }
  #raw { margin-top: 28px; border-top: 2px solid #888; padding-top: 6px; }
  #raw > div { display: inline-block; vertical-align: top; margin: 6px; }
</style>
<!-- VENDOR -->
<script>
  // DVC's page calls vegaEmbed('#id', spec) once per plot: draw it as SVG (which a test can read), keep
  // the page offline (no link to the online editor) and mark each plot drawn, or failed with its reason.
  (function () {
    const embed = window.vegaEmbed;
    window.vegaEmbed = function (selector, spec, options) {
      const box = document.querySelector(selector);
      const own = {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}};
      return embed(selector, spec, Object.assign(own, options))
        .then(function (result) { box.dataset.drawn = "ok"; return result; })
        .catch(function (error) {
          box.dataset.drawn = "error";
          box.insertAdjacentText("beforeend", "could not draw this plot: " + error);
        });
    };
  })();
</script>
</head>
<body>
<h1>MAE pre-training recipes compared</h1>
<div id="plots">
{plot_divs}
</div>
<script>
  // DVC lists its vega plots in dvc.yaml's order, then every image, then nothing else: put the comparison
  // figure first, open a heading per part of the story, and move the raw per-file curves to a closed
  // section at the end.
  (function () {
    const plots = document.getElementById("plots");
    const sections = __SECTIONS__;
    const raw = Array.from(plots.children).filter(function (d) { return d.id.startsWith("__RAW__"); });
    const first = document.getElementById(sections[0][0]);
    if (first) plots.prepend(first);
    sections.forEach(function (section) {
      const opens = Array.from(plots.children).find(function (d) { return d.id.startsWith(section[0]); });
      if (!opens) return;
      const heading = document.createElement("h2");
      heading.textContent = section[1];
      opens.before(heading);
    });
    if (raw.length) {
      const details = document.createElement("details");
      details.id = "raw";
      const summary = document.createElement("summary");
      summary.textContent = "Raw DVCLive curves, one plot per file of each stage (" + raw.length + ")";
      details.append(summary);
      raw.forEach(function (d) { details.append(d); });
      plots.after(details);
    }
  })();
</script>
</body>
</html>
"""


def template_html(scripts: dict[str, str]) -> str:
    """SKELETON with each package's script (`scripts[name]`) inlined, under a line naming its version."""
    inlined = "\n".join(
        f"<!-- {p.name}@{p.version} (npm, {p.file}; BSD-3-Clause: vendor/LICENSE.{p.name}) -->\n"
        f"<script>{scripts[p.name]}</script>"
        for p in VENDOR
    )
    return (
        SKELETON.replace("<!-- VENDOR -->", inlined)
        .replace("__SECTIONS__", json.dumps(SECTIONS))
        .replace("__RAW__", RAW_PREFIX)
    )


def build_template(tarballs: Path, out: Path = TEMPLATE) -> None:
    """Write the page template from the npm tarballs in `tarballs` (`npm pack` names: vega-5.33.1.tgz ...),
    each file checked against its pinned hash, and copy the licences that the tarballs carry."""
    scripts = {}
    for p in VENDOR:
        tgz = tarballs / f"{p.name}-{p.version}.tgz"
        if not tgz.is_file():
            raise SystemExit(f"error: {tgz} is missing: run `npm pack {p.name}@{p.version}` into {tarballs}")
        with tarfile.open(tgz) as tar:
            data = tar.extractfile(p.file).read()
            names = tar.getnames()
            if "package/LICENSE" in names:
                (out.parent / "vendor").mkdir(parents=True, exist_ok=True)
                (out.parent / "vendor" / f"LICENSE.{p.name}").write_bytes(tar.extractfile("package/LICENSE").read())
        digest = hashlib.sha256(data).hexdigest()
        if digest != p.sha256:
            raise SystemExit(
                f"error: {tgz}:{p.file} has sha256 {digest}, not the pinned {p.sha256}: "
                "update VENDOR in plots_page.py if you meant to change the version"
            )
        script = data.decode()  # byte for byte, so its hash is the pin (its source-map line is inert)
        if "</script" in script.lower():
            raise SystemExit(f"error: {p.name} contains '</script' and cannot be inlined")
        scripts[p.name] = script
    text = template_html(scripts)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf8")
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


# --- a look at a written page in headless Chromium --------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    # every host but the page's own server resolves to nothing, so a request elsewhere cannot succeed; the
    # net log still records it
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


@dataclass
class Look:
    dom: str  # the document after its scripts ran
    served: list[str] = field(default_factory=list)  # paths the page asked its own server for
    elsewhere: list[str] = field(default_factory=list)  # URLs it asked any other host for
    plots: dict[str, str] = field(default_factory=dict)  # vega plot id -> "ok" / "error" / "" (never ran)
    svgs: dict[str, int] = field(default_factory=dict)  # vega plot id -> data marks (paths) in its SVG
    images: list[str] = field(default_factory=list)  # <img> sources in order


class _Page(html.parser.HTMLParser):
    """The plots in a dumped DOM: DVC's vega boxes (a <div id> with the script that embeds it), their
    drawn state and the marks in their SVG, and every image."""

    def __init__(self):
        super().__init__()
        self.look = Look(dom="")
        self.stack: list[str | None] = []  # the id of the enclosing top-level plot box, per open <div>
        self.current: str | None = None
        self.groups: list[bool] = []  # per open SVG <g>: is it a group of data marks (not axes, legends)?

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            if "data-drawn" in a or ("id" in a and self.current is None and a["id"] not in ("plots", "raw")):
                self.current = a["id"]
                if "data-drawn" in a:
                    self.look.plots[a["id"]] = a["data-drawn"]
            self.stack.append(self.current)
        elif tag == "g":
            self.groups.append("role-mark" in (a.get("class") or "").split())
        elif tag == "path" and self.current in self.look.plots and a.get("d") and any(self.groups):
            self.look.svgs[self.current] = self.look.svgs.get(self.current, 0) + 1
        elif tag == "img":
            self.look.images.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "g" and self.groups:
            self.groups.pop()
        if tag == "div" and self.stack:
            opened = self.stack.pop()
            if not self.stack or self.stack[-1] != opened:
                self.current = self.stack[-1] if self.stack else None


def _vega_ids(page: str) -> list[str]:
    """The ids of the plots DVC asked vega-embed to draw (dvc_render's VegaRenderer.DIV, one each)."""
    return re.findall(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec', page)


def _page_requests(netlog: Path) -> list[tuple[str, str]]:
    """(initiator, URL) of every request in Chromium's net log. A page's own requests name its origin as
    initiator; the browser's background ones (update checks, time sync) say "not an origin"."""
    if not netlog.exists():
        raise RuntimeError(f"chromium wrote no net log at {netlog}")
    text = netlog.read_text(errors="replace").rstrip()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short at exit lacks its closing brackets
        log = json.loads(text.rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        (e["params"].get("initiator", ""), e["params"]["url"])
        for e in log["events"]
        if e["type"] == start and "url" in e.get("params", {})
    ]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def look(
    page_dir: Path,
    chromium: str = CHROMIUM,
    screenshot: Path | None = None,
    width: int = 1280,
    height: int = 1000,
    budget_ms: int = 30000,
) -> Look:
    """Serve `page_dir` on 127.0.0.1, open its index.html in headless Chromium (no other host resolves), and
    report what it drew and every request it made. With `screenshot`, photograph a `width` x `height` window."""
    served: list[str] = []

    class Handler(_Quiet):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=str(page_dir), **kw)

        def do_GET(self):
            served.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            netlog = Path(tmp) / "net.json"
            shot = [f"--screenshot={screenshot}", f"--window-size={width},{height}"] if screenshot else []
            cmd = [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp}/profile",
                f"--log-net-log={netlog}",
                f"--virtual-time-budget={budget_ms}",
                *shot,
                *([] if screenshot else ["--dump-dom"]),
                url,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
            requests = _page_requests(netlog)
    finally:
        server.shutdown()
        server.server_close()
    own = f"http://127.0.0.1:{server.server_address[1]}/"
    parser = _Page()
    parser.feed(proc.stdout)
    result = parser.look
    result.dom, result.served = proc.stdout, served
    result.elsewhere = sorted(
        {url for initiator, url in requests if initiator == own.rstrip("/") and not url.startswith(own)}
    )
    page = (page_dir / "index.html").read_text(encoding="utf8")
    for plot_id in _vega_ids(page):
        result.plots.setdefault(plot_id, "")
    return result


def problems(result: Look, page_dir: Path) -> list[str]:
    """Everything wrong with a look at a page: a plot not drawn, an image twice, a request off the page."""
    found = []
    for plot_id, state in result.plots.items():
        if state != "ok" or result.svgs.get(plot_id, 0) == 0:
            found.append(f"plot {plot_id} did not draw ({state or 'its script never finished'})")
    for src in dict.fromkeys(result.images):  # DVC copies each as static/<rev>_<path>: one src per revision
        if not (page_dir / src).is_file():
            found.append(f"image {src} is not next to the page")
        if result.images.count(src) > 1:
            found.append(f"image {src} appears {result.images.count(src)} times")
    local = [p for p in result.served if not (page_dir / p.lstrip("/")).is_file()]
    found += [f"the page asked its server for {p}, which is not one of its files" for p in local]
    found += [f"the page asked the network for {u}" for u in result.elsewhere]
    return found


def screenshot(out: Path, repo: Path = Path("."), chromium: str = CHROMIUM) -> None:
    """`dvc plots show` of `repo`'s workspace, photographed in headless Chromium and cropped to its content."""
    from PIL import Image, ImageChops

    with tempfile.TemporaryDirectory() as tmp:
        page_dir = Path(tmp) / "page"
        subprocess.run(["dvc", "plots", "show", "-o", str(page_dir)], cwd=repo, check=True, capture_output=True)
        raw = Path(tmp) / "shot.png"
        look(page_dir, chromium, screenshot=raw, height=6000)
        image = Image.open(raw).convert("RGB")
        blank = Image.new("RGB", image.size, (255, 255, 255))
        box = ImageChops.difference(image, blank).getbbox()
        if box:
            image = image.crop((0, 0, image.width, min(image.height, box[3] + 16)))
        out.parent.mkdir(parents=True, exist_ok=True)
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)  # a third the bytes
    print(f"wrote {out} ({image.width}x{image.height})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mae_exp.plots_page", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("template", help=f"write {TEMPLATE} from the npm tarballs in a folder")
    t.add_argument("tarballs", type=Path)
    s = sub.add_parser("screenshot", help="photograph `dvc plots show` of the workspace")
    s.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    if a.command == "template":
        build_template(a.tarballs)
        return 0
    if not Path(CHROMIUM).exists() or shutil.which("dvc") is None:
        print(f"error: the screenshot needs {CHROMIUM} (Debian: apt-get install chromium) and dvc", file=sys.stderr)
        return 1
    screenshot(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
