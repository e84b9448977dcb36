"""Tennessee Eastman process (TEP) benchmark data for the benchmark scripts, and the published results to compare.

The classic Braatz-group data set (Russell, Chiang & Braatz 2000; Chiang, Russell & Braatz 2001): 52 variables
sampled every 3 minutes from the closed-loop simulator.

- ``d00.dat``: normal operation, 500 samples, the training set. Stored TRANSPOSED in the original distribution
  (52 rows x 500 columns); :func:`load_train` turns it round.
- ``d00_te.dat``: normal operation, 960 samples, the test set for false alarms.
- ``dNN_te.dat`` (NN = 01..21): 960 samples with fault NN introduced after sample 160 (8 hours), i.e. from the
  161st sample on (row index 160, zero-based).
- ``dNN.dat``: fault training sets, 480 x 52. When the fault starts in them is stated neither in the files nor in
  the copy's README, so :func:`load_fault_train` adds no label.

Files are whitespace-separated text in ``%.7e`` format, no header. They are not kept in the repository (the
copy's only licence text is the University of Illinois notice for the simulator code; whether it covers the data
is unclear, so we do not redistribute them): they live in a cache directory, ``$MILLRACE_TEP_DIR`` or
``~/.cache/millrace/tep``, and :func:`ensure` downloads missing ones from the public GitHub copy
``camaramm/tennessee-eastman-profBraatz`` and checks each against the SHA-256 recorded below.

    from tep_data import data_dir, ensure, load_test, load_train, to_wide_csv

    directory = ensure(data_dir(args.data_dir))
    train, test = load_train(directory), load_test(directory, 1)
    to_wide_csv(test, Path("d01_te.csv"))   # then: millrace ml evaluate d01_te.csv --train-file d00.csv
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

FAULT_START = 160  # samples before the fault in every dNN_te set (8 h at 3 min)
SAMPLE_MINUTES = 3
UNDETECTABLE = (3, 9, 15)  # missed by PCA, DPCA and CVA alike in the papers below; usually left out of averages
FAULTS = tuple(range(1, 22))
TRAIN_SAMPLES, TEST_SAMPLES, FAULT_TRAIN_SAMPLES = 500, 960, 480

# Column order of every file: x = [XMEAS(1..41), XMV(1..11)] (README of the copy; Downs & Vogel 1993).
# A few of them, from the variable tables of that README (teprob.f):
#   xmeas_01 A feed (stream 1), xmeas_02 D feed (stream 2), xmeas_03 E feed (stream 3),
#   xmeas_04 A and C feed (stream 4), xmeas_06 reactor feed rate, xmeas_07 reactor pressure,
#   xmeas_08 reactor level, xmeas_09 reactor temperature, xmeas_10 purge rate, xmeas_12 separator level,
#   xmeas_15 stripper level, xmeas_18 stripper temperature, xmeas_20 compressor work,
#   xmeas_21 reactor cooling water outlet temperature, xmeas_22 separator cooling water outlet temperature;
#   xmeas_23..36 reactor-feed and purge-gas analysers (sampled every 0.1 h, 0.1 h dead time),
#   xmeas_37..41 product analyser (every 0.25 h): sample-and-hold steps in the 3-minute data.
#   xmv_01 D feed flow, xmv_02 E feed flow, xmv_03 A feed flow, xmv_04 A and C feed flow,
#   xmv_05 compressor recycle valve, xmv_06 purge valve, xmv_07 separator liquid flow,
#   xmv_08 stripper liquid product flow, xmv_09 stripper steam valve, xmv_10 reactor cooling water flow,
#   xmv_11 condenser cooling water flow. XMV(12), the agitator speed, is constant and not in the files.
VARIABLES: tuple[str, ...] = tuple(f"xmeas_{i:02d}" for i in range(1, 42)) + tuple(f"xmv_{i:02d}" for i in range(1, 12))

SOURCE_REPO = "camaramm/tennessee-eastman-profBraatz"
SOURCE_BRANCH = "master"
RAW_BASE = f"https://raw.githubusercontent.com/{SOURCE_REPO}/{SOURCE_BRANCH}/"
ENV_VAR = "MILLRACE_TEP_DIR"
TIMEOUT_S = 60.0
TRAIN_FILE = "d00.dat"

# SHA-256 of the files at commit 0643318 of the copy (fetched and hashed when this module was written).
SHA256: dict[str, str] = {
    "d00.dat": "4c3c0b11eefacf93e5d2529e2866d7a625e37aa9153d0f95fae17a6c9e560deb",
    "d00_te.dat": "57d56da4199e3d73582855d810be1d13d931386fd728bf1694798c7b0a03678c",
    "d01.dat": "b0da22ac7561d82b0ba0b48bf87d2b3a8655cb23a3dc37330dd03cdd126c387c",
    "d01_te.dat": "e7e6992fb39664e739fccbc001a1c5d5f7cb21829544f734ca3f282c26f680e5",
    "d02.dat": "af1a46ba3a5482be3e7b143606f22ae509138544af2a2d0eb7389459257f8179",
    "d02_te.dat": "a34bd9c3693fa96bd3ee533fb7fbe29a9d226a4e3250b585ef1308e1136dbfb0",
    "d03.dat": "df39c57bdac7ea476ee236c289e0f59b0cbf868adfbbbaf213f692d8cd96e52a",
    "d03_te.dat": "b7bf6f2ed7cff0a5577898b009edd252b9bdf6ee9ff7dbeacf9af9aa4c6abace",
    "d04.dat": "346702fce33d9707f0b4ec5b8f533ccb08be60313607d5156d7e237b80a87b3f",
    "d04_te.dat": "1ccb488dd5feac11aad54623451168abef066229e685872597897800363916f9",
    "d05.dat": "3a47bfce4010ce0c634ae828409cce657ecd03bf0c4d59f8dd4a3d4f792f493f",
    "d05_te.dat": "1def7258a2865aeead699d52c8cf926fbf34c1467aaf298121987ab858fd0888",
    "d06.dat": "ff0882a44bb74f5d2d1a864425ac7e5ae82420391c7060232cefc08ad5bf7331",
    "d06_te.dat": "8a3adc7121eaa9b9300c27f9c57a8ab356315401cb964310a4a8244dd34bf79d",
    "d07.dat": "e3fd272ed53f899ab0c8278c7eede55418b01a2339b5fcff14a87fefaa3d181d",
    "d07_te.dat": "e01b7c81daf9fccc4495cbde5658296918276b3c078044893f6e945dd91d3446",
    "d08.dat": "4817735e339449bec909d1cbe77e421acc79c7357b8c6b5bb82c6e5788b72449",
    "d08_te.dat": "c0637f02f23b79890b43cfee9604818ad6d7f81532223d76acf1da0d6e2a2cc1",
    "d09.dat": "cb9146da760cdd52cad575d745413a5cfb4b447af2db9fb6a424cf6881ff0fcd",
    "d09_te.dat": "513df6c3a4fd48e0eaddb0002cd8cdab3a78a5c83c47883bb52d2dc6c2472428",
    "d10.dat": "e08697b5d074aea2345434bc4d26296f5dbdbb7efbf37a1bbee292b2ce765e8f",
    "d10_te.dat": "3a278be79d8d111fc60be3cfb4f961c28e2dc632f17eb519886aa0f95864ffc6",
    "d11.dat": "8294734d6f6e8f6b8643b9dc72f38ce40afd868d30dee9368a0d26b963a0af9f",
    "d11_te.dat": "6d60a4c932d918e1ab26ae5d16320936a665f3aad3f05482d23f5c4550b9f29a",
    "d12.dat": "62fcb3c71c0eda8eaaaf707f35296e60b17baaf9a9aef588687532cf4c560d38",
    "d12_te.dat": "2180fcecb01d1b110b429ba2969d6b18dcc625599e3640e54f69afa32dccbe50",
    "d13.dat": "f755d4ab6dc1d30e36c2e4604eeb0baff4b91032f487398b97fb1220eda861dd",
    "d13_te.dat": "2e34e0c427d6e41d77d6cae76550b7e95004f9f13bc093278ecf5c282a1c9f03",
    "d14.dat": "29fda7d5cae58cb7240e569e2d2d436371d077d282187d9205c7dc01df8755af",
    "d14_te.dat": "e8976d056c0769cebbcec3bcba89d2468040ccae7acbea55ebc3b2e56b217396",
    "d15.dat": "4c82fe0864cce2521e91a2c3e59d8630627c5e633cffe83f5e34ebc9901b5bca",
    "d15_te.dat": "a7242b956837bec8ca7f224d01805247f2aea6ea868eaa064e068b5c0761b1e5",
    "d16.dat": "ca1dfc5e31292052e83dcf6b4f60a73da197eb8a47e65d908ed7ac3cbcccb007",
    "d16_te.dat": "8381d7371aac49b498e7bf93149b77a0a6bbeffe73520881dcbe8ae96277244d",
    "d17.dat": "596aad6421a64d257bfa098cd5c4664d46dc49d88d1bad86cbc9518e6cd69e42",
    "d17_te.dat": "27d2d72052064e3cbb7a45df8073f15bb83b77403f532616e73c8869b043e7c9",
    "d18.dat": "b4d182c070036104cf150bc33f7aa879805f19943eb298bc05bdc8647dc70291",
    "d18_te.dat": "1db5b93a7daa58ed1b641845b58ad818546ced7f3de866c086da18a7ebef5041",
    "d19.dat": "ee3d2a50285cb3ba5e52ec05ea7cb39dc2b574bec592af9d44c192be132aeea6",
    "d19_te.dat": "c24dd77f787f89347273addc8a453d79f0b99edd64d43be11a5e0907bd515c5f",
    "d20.dat": "acdfe6c256fa6de74a811d6c7df1b710a9f0ed60f48242be92f3fa30db3df6b3",
    "d20_te.dat": "e54035eda95311f13dd095f87607d97a89b7541afa2a3f68af098f33a5e2e6e5",
    "d21.dat": "f34a9fefffef04ef1f49b3fb74e3def0010cda27a8577d814dd50604e2f8dc09",
    "d21_te.dat": "b6823aa09638cd59cb168bc24f991b6d4d557d8aea62b0b2a87ee67c21ba5a83",
}

# Published fault-detection results to compare against.
#
# WHAT THE TABLE HOLDS. Fault detection rates (FDR; the source does not define its denominator, the usual one is the
# 800 post-onset samples of dNN_te) of PCA T2, PCA Q (SPE),
# DPCA T2 and DPCA Q per fault, as read in Table I ("Results of process monitoring in TE process") of
#   X. Wang, H. Zhang, X. Qiao, K. Ma, S. Tao, P. Peng, H. Wang, "Generalized Out-of-distribution Fault Diagnosis
#   (GOOFD) via Internal Contrastive Learning" (Zhejiang University / Tsinghua; IEEE-style manuscript),
# read as the text of a stored public copy (index file id 59127700602; the repository holding it was not
# identified). That table gives percentages; they are stored here divided by 100. Its "Average" row (over all 21
# faults) is PCA T2 60.50, PCA Q 68.66, DPCA T2 57.08, DPCA Q 63.36, and the values below reproduce those four
# averages exactly, which checks the transcription.
#
# WHERE THE NUMBERS COME FROM. The citing paper did not compute them; its table quotes them from
#   PCA T2 / Q:  X. Deng, X. Tian, S. Chen, C. J. Harris, "Nonlinear process fault diagnosis based on serial
#                principal component analysis", IEEE Trans. Neural Netw. Learn. Syst. 29(3) (2018) 560-572
#                (its ref. [12]);
#   DPCA T2 / Q: T. J. Rato, M. S. Reis, "Fault detection in the Tennessee Eastman benchmark process using dynamic
#                principal components analysis based on decorrelated residuals (DPCA-DR)", Chemometr. Intell.
#                Lab. Syst. 125 (2013) 101-108 (its ref. [30]).
# Neither original was in reach, so the numbers are second-hand: what the citing paper says those papers report.
# Not checked: whether the citing paper is published in a peer-reviewed venue, whether it copied the originals
# correctly, and which data, number of components, lags and control limits the originals used (both papers are
# commonly described as using the Braatz-group files, 500 training samples, fault from sample 161, but that was not
# read in either of them). The citing paper gives no false alarm rates for these methods and no settings for them.
#
# NOT FOUND (searched for this table before using the one above): Russell, Chiang & Braatz, "Fault detection in
# industrial processes using canonical variate analysis and dynamic principal component analysis", Chemometr.
# Intell. Lab. Syst. 51 (2000) 81-93 (missed detection rates of PCA/DPCA/CVA), and Yin, Ding, Haghani, Hao &
# Zhang, "A comparison study of basic data-driven fault diagnosis and process monitoring methods on the benchmark
# Tennessee Eastman process", J. Process Control 22 (2012) 1567-1581. The stored public web pages hold only the
# first part of each page (Yin 2012 is stored, from a scribd copy, but only its first page), and the searched
# public code and documentation quote neither table. When either original is in reach, prefer it: record its
# numbers as a second source next to these, say which one the comparison uses, and check the two against each
# other. Faults 3, 9 and 15 stay near zero in every column below (UNDETECTABLE).
PUBLISHED_STATISTICS = ("pca_t2", "pca_q", "dpca_t2", "dpca_q")
PUBLISHED_SOURCE = (
    "Wang, Zhang, Qiao, Ma, Tao, Peng & Wang, 'Generalized Out-of-distribution Fault Diagnosis (GOOFD) via "
    "Internal Contrastive Learning', Table I, quoting PCA T2/Q from Deng, Tian, Chen & Harris, IEEE TNNLS 29 "
    "(2018) 560-572 and DPCA T2/Q from Rato & Reis, Chemometr. Intell. Lab. Syst. 125 (2013) 101-108 "
    "(second-hand; percentages divided by 100)"
)
# fault: (pca_t2, pca_q, dpca_t2, dpca_q), in percent, exactly as printed in the citing paper's Table I.
_PUBLISHED_PERCENT: dict[int, tuple[float, float, float, float]] = {
    1: (99.50, 99.80, 99.00, 99.40),
    2: (98.30, 98.80, 98.40, 98.10),
    3: (8.10, 7.80, 3.50, 1.00),
    4: (28.90, 100.0, 16.50, 99.90),
    5: (30.60, 31.30, 29.30, 22.80),
    6: (99.30, 100.0, 98.90, 99.90),
    7: (100.0, 100.0, 98.60, 99.90),
    8: (97.50, 97.90, 97.30, 97.40),
    9: (7.40, 6.00, 3.00, 0.20),
    10: (49.80, 53.90, 43.90, 17.20),
    11: (47.40, 73.30, 34.00, 82.90),
    12: (99.00, 97.80, 99.00, 96.40),
    13: (95.00, 95.40, 94.30, 95.00),
    14: (99.00, 100.0, 99.00, 99.90),
    15: (12.40, 8.80, 5.90, 0.90),
    16: (32.50, 48.30, 21.70, 14.50),
    17: (81.60, 93.90, 79.00, 95.30),
    18: (89.50, 91.40, 89.00, 89.80),
    19: (8.40, 29.10, 4.60, 29.80),
    20: (47.00, 57.30, 40.80, 49.30),
    21: (39.40, 51.10, 42.90, 40.90),
}
PUBLISHED: dict[int, dict[str, float | None]] = {
    fault: {name: round(value / 100.0, 6) for name, value in zip(PUBLISHED_STATISTICS, row, strict=True)}
    for fault, row in _PUBLISHED_PERCENT.items()
}
# False alarm rates of the same four statistics on d00_te: not given by the source above, not found elsewhere.
PUBLISHED_FALSE_ALARM: dict[str, float | None] = dict.fromkeys(PUBLISHED_STATISTICS)
# Settings behind the table (confidence level, numbers of components, DPCA lags, kinds of limit): not stated in the
# citing paper, and the originals were not read, so all are unknown.
PUBLISHED_SETUP: dict[str, float | int | str | None] = {
    "confidence": None,
    "t2_limit": None,
    "q_limit": None,
    "pca_components": None,
    "dpca_lags": None,
    "dpca_components": None,
}


def best_published(fault: int) -> float | None:
    """The best published detection rate (0..1) of PCA T2, PCA Q, DPCA T2 and DPCA Q for ``fault``, or None.

    None when the fault is not in the table or none of the four statistics has a number. See PUBLISHED_SOURCE.
    """
    values = [value for value in PUBLISHED.get(fault, {}).values() if value is not None]
    return max(values) if values else None


class TepDataError(Exception):
    """A TEP file is missing, cannot be downloaded, fails its checksum or has the wrong shape."""


def data_dir(explicit: Path | None = None) -> Path:
    """The explicit directory, else ``$MILLRACE_TEP_DIR``, else ``~/.cache/millrace/tep``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "millrace" / "tep"


def _test_name(fault: int) -> str:
    return f"d{fault:02d}_te.dat"


def _fault_train_name(fault: int) -> str:
    return f"d{fault:02d}.dat"


def required_files(*, fault_training: bool = False) -> list[str]:
    """The files :func:`load_train` and :func:`load_test` read (plus the dNN.dat sets with ``fault_training``)."""
    names = [TRAIN_FILE, _test_name(0), *(_test_name(f) for f in FAULTS)]
    if fault_training:
        names += [_fault_train_name(f) for f in FAULTS]
    return names


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(name: str, target: Path) -> None:
    """Fetch one file to a temporary name, check its SHA-256, then rename it into place."""
    url = RAW_BASE + name
    tmp = target.with_name(f".{name}.part")
    print(f"tep: downloading {url}", file=sys.stderr, flush=True)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, tmp.open("wb") as out:
            while block := response.read(1 << 16):
                out.write(block)
        got = _sha256(tmp)
        if got != SHA256[name]:
            raise TepDataError(f"{url}: SHA-256 {got} does not match the recorded {SHA256[name]}")
        tmp.replace(target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise TepDataError(
            f"could not download {name} ({exc}); download the TEP .dat files from "
            f"https://github.com/{SOURCE_REPO} yourself into {target.parent}, or pass --data-dir"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    print(f"tep: {name} ok ({target.stat().st_size:,} bytes)", file=sys.stderr, flush=True)


def ensure(directory: Path, *, fault_training: bool = False) -> Path:
    """Make sure the files are in ``directory``: download the missing ones and check every one's SHA-256.

    Files already present are checked, never re-downloaded: a mismatch raises TepDataError (delete the file to
    fetch it again). Returns ``directory``. Raises TepDataError, with a one-line message, when a file cannot be
    downloaded (no network, say).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in required_files(fault_training=fault_training):
        path = directory / name
        if not path.exists():
            _download(name, path)
        elif (got := _sha256(path)) != SHA256[name]:
            raise TepDataError(f"{path}: SHA-256 {got} does not match the recorded {SHA256[name]}; delete it")
    return directory


def _read(path: Path, shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    if not path.exists():
        raise TepDataError(f"{path} is missing; run ensure() or put the TEP .dat files in {path.parent}")
    try:
        values = np.loadtxt(path, dtype=float, ndmin=2)
    except ValueError as exc:
        raise TepDataError(f"{path}: not a whitespace-separated numeric table ({exc})") from exc
    if values.shape not in shapes:
        want = " or ".join(f"{r} x {c}" for r, c in shapes)
        raise TepDataError(f"{path}: {values.shape[0]} x {values.shape[1]} values, expected {want}")
    if not np.isfinite(values).all():
        raise TepDataError(f"{path}: contains non-finite values")
    return values


def load_train(directory: Path) -> pd.DataFrame:
    """The normal training set, ``d00.dat``: 500 samples x 52 variables (VARIABLES), index 0..499.

    The original file is stored transposed (52 rows of 500); an already un-transposed copy (500 rows of 52)
    is accepted too.
    """
    values = _read(Path(directory) / TRAIN_FILE, ((len(VARIABLES), TRAIN_SAMPLES), (TRAIN_SAMPLES, len(VARIABLES))))
    if values.shape[0] == len(VARIABLES):
        values = values.T
    return pd.DataFrame(values, columns=list(VARIABLES))


def load_test(directory: Path, fault: int) -> pd.DataFrame:
    """Test set ``dNN_te.dat``: 960 samples x 52 variables plus a boolean ``fault`` column.

    ``fault`` is True from sample index FAULT_START (160) on; for fault 0 (``d00_te.dat``, normal) it is all False.
    """
    if fault != 0 and fault not in FAULTS:
        raise ValueError(f"fault must be 0..21, not {fault}")
    values = _read(Path(directory) / _test_name(fault), ((TEST_SAMPLES, len(VARIABLES)),))
    frame = pd.DataFrame(values, columns=list(VARIABLES))
    frame["fault"] = (np.arange(TEST_SAMPLES) >= FAULT_START) if fault else np.zeros(TEST_SAMPLES, dtype=bool)
    return frame


def load_fault_train(directory: Path, fault: int) -> pd.DataFrame:
    """Fault training set ``dNN.dat``: 480 samples x 52 variables, no label (see the module docstring)."""
    if fault not in FAULTS:
        raise ValueError(f"fault must be 1..21, not {fault}")
    values = _read(Path(directory) / _fault_train_name(fault), ((FAULT_TRAIN_SAMPLES, len(VARIABLES)),))
    return pd.DataFrame(values, columns=list(VARIABLES))


def to_wide_csv(frame: pd.DataFrame, path: Path, *, start: str = "2026-01-01T00:00:00Z") -> Path:
    """Write a wide CSV for ``millrace ml evaluate``: ``timestamp`` (UTC, every SAMPLE_MINUTES from ``start``),
    the 52 variable columns and, when ``frame`` has a ``fault`` column (a test set), ``label`` 0/1."""
    missing = [name for name in VARIABLES if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks TEP columns: {', '.join(missing[:5])}")
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    times = pd.date_range(t0, periods=len(frame), freq=f"{SAMPLE_MINUTES}min")
    out = pd.DataFrame({"timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ")})
    for name in VARIABLES:
        out[name] = frame[name].to_numpy()
    if "fault" in frame.columns:
        out["label"] = frame["fault"].astype(int).to_numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, float_format="%.7e")
    return path
