"""Finding, checking, splitting and weighting the data (no TensorFlow)."""
import csv
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, make_image, make_tree, run_cli
from edge_runtime.errors import InputError
from edge_runtime.preprocess import load_pixels
from train import data as D


def scan_tree(root):
    entries, empty = D.list_folder(root)
    return D.scan(entries, root, empty)


def test_folder_loading_lists_classes_and_counts(tmp_path):
    root = make_tree(tmp_path, {"a": 5, "b": 3})
    samples, report = scan_tree(root)
    assert report["per_class"] == {"a": 5, "b": 3}
    assert {s.label for s in samples} == {"a", "b"}
    assert all(len(s.sha256) == 64 for s in samples)


def test_csv_loading_with_header(tmp_path):
    root = make_tree(tmp_path / "img", {"a": 3, "b": 3})
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        for p in sorted((tmp_path / "img").rglob("*.png")):
            w.writerow([p.relative_to(root).as_posix(), "x" + p.parent.name])
        w.writerow(["a/missing.png", "xa"])
    entries, _ = D.list_csv(csv_path, root)
    samples, report = D.scan(entries, root)
    assert report["per_class"] == {"xa": 3, "xb": 3}
    assert report["skipped_by_reason"] == {"missing file": 1}


def test_bad_csv_row_is_one_clear_error(tmp_path):
    (tmp_path / "l.csv").write_text("filename,label\nonly-one-column\n")
    with pytest.raises(InputError, match="row 1"):
        D.list_csv(tmp_path / "l.csv", tmp_path)


def test_corrupt_truncated_and_non_image_files_are_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path, {"a": 4, "b": 4}, ext="jpg")
    (root / "a" / "notes.txt").write_text("not an image")
    good = (root / "b" / "000.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "a" / "empty.png").write_bytes(b"")
    samples, report = scan_tree(root)
    assert report["images_used"] == 8
    assert report["skipped"] == 3
    assert report["skipped_by_reason"]["not an image"] == 2
    assert report["skipped_by_reason"]["unreadable image"] == 1
    assert {s["path"] for s in report["skipped_files"]} == {"a/notes.txt", "b/truncated.jpg", "a/empty.png"}


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    src = make_image((200, 30, 30), 24)
    if mode == "I;16":
        arr = (np.asarray(src.convert("L"), np.uint16) * 257)
        img = Image.fromarray(arr, "I;16")
    else:
        img = src.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    px = load_pixels(path, (16, 16))
    assert px.shape == (16, 16, 3) and px.dtype == np.uint8
    # the pixels themselves: what the image shows, as 8-bit RGB, resized the contract's way
    shown = src.convert("L") if mode == "I;16" else Image.open(path).convert("RGB")  # 16-bit: scaled down, not clipped
    expected = np.asarray(shown.convert("RGB").resize((16, 16), Image.BILINEAR), np.int16)
    assert np.abs(px.astype(np.int16) - expected).max() <= (1 if mode == "I;16" else 0), mode
    if mode not in ("L", "LA", "I;16", "1"):  # colour stays colour: the red square is red
        assert px[..., 0].mean() > px[..., 1].mean() + 40, mode


def test_rgba_transparency_composites_over_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (load_pixels(img, (8, 8)) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white in stored orientation (landscape)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "r.jpg"
    img.save(path, exif=exif, quality=95)
    px = load_pixels(path, (40, 20))  # (height, width): displayed image is portrait
    assert px[:20].mean() > 200 and px[20:].mean() < 50  # white half is now on top


def test_split_is_stratified_and_reproducible():
    samples = [D.Sample(f"{c}/{i}.png", c) for c, n in (("a", 40), ("b", 20), ("c", 7)) for i in range(n)]
    first = {s.path: s.subset for s in D.split([D.Sample(s.path, s.label) for s in samples], 0.15, 0.15, seed=3)}
    again = {s.path: s.subset for s in D.split([D.Sample(s.path, s.label) for s in samples], 0.15, 0.15, seed=3)}
    other = {s.path: s.subset for s in D.split([D.Sample(s.path, s.label) for s in samples], 0.15, 0.15, seed=4)}
    assert first == again and first != other
    per = Counter((p.split("/")[0], sub) for p, sub in first.items())
    assert (per[("a", "train")], per[("a", "val")], per[("a", "test")]) == (28, 6, 6)
    assert (per[("b", "train")], per[("b", "val")], per[("b", "test")]) == (14, 3, 3)
    assert per[("c", "val")] == 1 and per[("c", "test")] == 1 and per[("c", "train")] == 5


def test_undersampling_caps_train_only():
    samples = D.split([D.Sample(f"{c}/{i}.png", c) for c, n in (("a", 50), ("b", 10)) for i in range(n)], seed=0)
    before = Counter((s.label, s.subset) for s in samples)
    D.undersample(samples, 5, seed=0)
    after = Counter((s.label, s.subset) for s in samples)
    assert after[("a", "train")] == 5 and after[("b", "train")] == 5
    assert after[("a", "unused")] == before[("a", "train")] - 5
    for k in (("a", "val"), ("a", "test"), ("b", "val"), ("b", "test")):
        assert after[k] == before[k]


def test_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    y = [0] * 30 + [1] * 10 + [2] * 5
    w = D.class_weights(y, 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(y))
    assert np.allclose([w[i] for i in range(3)], expected)
    assert np.isclose(w[2], 45 / (3 * 5))


def test_validate_classes_errors(tmp_path):
    with pytest.raises(InputError, match="at least 2 classes"):
        D.validate_classes({"root": "x", "per_class": {"a": 10}}, 0.15, 0.15)
    with pytest.raises(InputError, match="'b' has no usable images"):
        D.validate_classes({"root": "x", "per_class": {"a": 10, "b": 0}}, 0.15, 0.15)
    with pytest.raises(InputError, match="'b' has 2 usable"):
        D.validate_classes({"root": "x", "per_class": {"a": 10, "b": 2}}, 0.15, 0.15)


@pytest.mark.parametrize("layout,fragment", [
    ({"only": 6}, "at least 2 classes"),
    ({"a": 6, "empty": 0}, "'empty' has no usable images"),
    ({"a": 6, "tiny": 2}, "'tiny' has 2 usable image"),
])
def test_cli_rejects_unusable_datasets_with_one_line(tmp_path, layout, fragment):
    root = make_tree(tmp_path / "d", layout)
    proc = run_cli("-m", "train", "--data", str(root), "--run", str(tmp_path / "run"), "--weights", "none")
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "run").exists()


def test_cli_rejects_a_wrong_path(tmp_path):
    assert_one_line_error(run_cli("-m", "train", "--data", str(tmp_path / "nope")), "does not exist")
