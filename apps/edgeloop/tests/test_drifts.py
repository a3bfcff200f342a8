"""The learning loop's drifts (edgeloop.drifts) and how the loop's photos are fitted to a data set."""

from __future__ import annotations

import io
import math
import random
import statistics
from pathlib import Path

import pytest
from edgeloop.demo_loop import MIN_WINDOW, LoopScenario, split_photos
from edgeloop.drifts import DEFAULT_DRIFT, DRIFT_KINDS, parse_drift
from edgeloop_common.images import assess_quality, inspect_image
from PIL import Image

from tests.synthetic_photos import photo, write_data_set

# -- the spec ------------------------------------------------------------------------------------------------------


def test_a_name_alone_takes_the_documented_default_strength() -> None:
    for name, kind in DRIFT_KINDS.items():
        drift = parse_drift(name)
        assert (drift.name, drift.strength) == (name, kind.default)
    assert parse_drift(DEFAULT_DRIFT).spec == "noise:0.15"
    assert parse_drift("darken").describe() == "darker light (brightness x0.25)"


def test_a_strength_after_a_colon_and_forgiving_spellings() -> None:
    assert parse_drift("blur:0.03").strength == 0.03
    drift = parse_drift(" Color_Cast:-0.2 ")
    assert (drift.name, drift.strength) == ("colour-cast", -0.2)
    assert "cool (bluish)" in drift.describe()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fog", "unknown drift 'fog': choose one of darken, brighten, blur, noise, low-contrast, colour-cast"),
        ("", "unknown drift ''"),
        ("darken:2", "drift darken: strength 2 is out of (0, 1) (brightness factor)"),
        ("brighten:0.5", "drift brighten: strength 0.5 is out of (1, 10]"),
        ("darken:dim", "drift darken: strength 'dim' is not a number"),
        ("blur:", "drift blur: a strength is missing after ':'"),
        ("colour-cast:0", "drift colour-cast: strength 0 is out of [-0.9, 0.9]"),
        ("grayscale:nan", "drift grayscale: strength nan is out of"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_drift(spec)
    assert message in str(raised.value)


# -- each transform moves the statistic it claims to move ---------------------------------------------------------

# How each drift at its default strength moves its statistics: +1 up, -1 down (a kind without an entry fails).
DIRECTIONS = {
    "darken": {"brightness_mean": -1},
    "brighten": {"brightness_mean": +1},
    "blur": {"sharpness_laplacian_var": -1},
    "noise": {"sharpness_laplacian_var": +1},
    "low-contrast": {"contrast_std": -1},
    "colour-cast": {"red_green_mean": +1, "blue_yellow_mean": -1},
    "grayscale": {"saturation_mean": -1},
    "downscale": {"width": -1, "height": -1},
}


def _photos(size: int) -> list[bytes]:
    rng = random.Random(5)
    pictures = [photo(label, rng, size) for label in ("checks", "dots", "stripes") for _ in range(3)]
    return [_jpeg(picture) for picture in pictures]


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("name", sorted(DRIFT_KINDS))
@pytest.mark.parametrize("size", [96, 400])
def test_each_drift_moves_the_statistics_it_names(name: str, size: int) -> None:
    assert set(DIRECTIONS) == set(DRIFT_KINDS)
    drift = parse_drift(name)
    assert set(DIRECTIONS[name]) == set(drift.moves)
    before = [inspect_image(data).stats for data in _photos(size)]
    after = [inspect_image(drift.apply(data)).stats for data in _photos(size)]
    for feature, direction in DIRECTIONS[name].items():
        moves = [direction * (now[feature] - was[feature]) for was, now in zip(before, after, strict=True)]
        assert all(move > 0 for move in moves), (feature, moves)  # every photo, the claimed way
        was = statistics.median(stats[feature] for stats in before)
        now = statistics.median(stats[feature] for stats in after)
        assert abs(now - was) > max(0.25 * abs(was), 1e-3), (feature, was, now)  # and clearly


def test_a_bluish_cast_moves_the_opponent_colours_the_other_way() -> None:
    warm, cool = parse_drift("colour-cast:0.3"), parse_drift("colour-cast:-0.3")
    for data in _photos(96)[:3]:
        base = inspect_image(data).stats
        warmer, cooler = inspect_image(warm.apply(data)).stats, inspect_image(cool.apply(data)).stats
        assert warmer["red_green_mean"] > base["red_green_mean"] > cooler["red_green_mean"]
        assert warmer["blue_yellow_mean"] < base["blue_yellow_mean"] < cooler["blue_yellow_mean"]


def test_a_drift_is_deterministic_and_sends_a_jpeg() -> None:
    data = _photos(96)[0]
    for name in DRIFT_KINDS:
        drift = parse_drift(name)
        assert drift.apply(data) == drift.apply(data), name
        assert inspect_image(drift.apply(data)).format == "jpeg"
    assert parse_drift("downscale:0.5").apply(data) != data


@pytest.fixture(scope="module")
def extreme_train_photos(catdog_train_dir: Path) -> list[bytes]:
    """The darkest, brightest and flattest train photos (ten of each), and every eighth of the others."""
    photos = sorted(catdog_train_dir.rglob("*.jpg"))
    stats = {path: inspect_image(path.read_bytes()).stats for path in photos}
    chosen = set(photos[::8])
    for feature in ("brightness_mean", "contrast_std"):
        ranked = sorted(photos, key=lambda path: stats[path][feature])
        chosen.update(ranked[:10] + ranked[-10:])
    return [path.read_bytes() for path in sorted(chosen)]


@pytest.mark.parametrize("spec", ["darken", "brighten", "blur", "low-contrast", "noise", "grayscale"])
def test_photos_under_a_drift_still_have_something_to_classify(extreme_train_photos: list[bytes], spec: str) -> None:
    """The gateway's quality verdict stays "ok" under the loop's drifts at their default strengths (the closed
    loop darkens x0.25): the loop must learn from these photos, not set them aside as too dark or blank."""
    drift = parse_drift(spec)
    for data in extreme_train_photos:
        stats = inspect_image(drift.apply(data)).stats
        assert assess_quality(stats) == "ok", (drift.spec, stats)


# -- the loop's photos, fitted to any data set ---------------------------------------------------------------------


def _empty_data_set(root: Path, counts: dict[str, int]) -> Path:
    """Class folders of placeholder files: enough for fitting the sizes (which counts files only)."""
    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for index in range(count):
            (root / label / f"{index}.jpg").write_bytes(b"")
    return root


def test_the_cat_dog_set_keeps_the_tuned_sizes(catdog_train_dir: Path) -> None:
    assert LoopScenario().fitted_to(catdog_train_dir) == LoopScenario()


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("per_class", [18, 25, 40, 80, 120, 300])
def test_any_data_set_large_enough_gets_sizes_that_fit_it(tmp_path: Path, classes: int, per_class: int) -> None:
    counts = {f"class-{index}": per_class + index for index in range(classes)}
    if per_class + classes < 8 + math.ceil(2 * MIN_WINDOW / classes):
        return
    scenario = LoopScenario().fitted_to(_empty_data_set(tmp_path, counts))
    taken = scenario.seed_per_class + math.ceil((scenario.before_photos + scenario.after_photos) / classes)
    assert taken <= per_class, scenario
    assert scenario.seed_per_class >= 8
    assert MIN_WINDOW <= scenario.drift_window <= min(scenario.before_photos, scenario.after_photos)
    assert 8 <= scenario.labels_per_training <= scenario.before_photos + scenario.after_photos - 4


def test_a_data_set_too_small_says_how_many_photos_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the loop needs at least 18 per class"):
        LoopScenario().fitted_to(_empty_data_set(tmp_path / "small", {"a": 12, "b": 40}))
    with pytest.raises(ValueError, match="two or more class folders"):
        LoopScenario().fitted_to(_empty_data_set(tmp_path / "one", {"a": 100}))
    with pytest.raises(ValueError, match="unknown drift"):
        LoopScenario(drift="rain").fitted_to(_empty_data_set(tmp_path / "fine", {"a": 100, "b": 100}))


def test_drifted_images_give_the_after_stream_however_few(tmp_path: Path) -> None:
    data = _empty_data_set(tmp_path / "data", {"a": 200, "b": 200})
    few = _empty_data_set(tmp_path / "few", {"a": 7, "b": 5})
    scenario = LoopScenario(drifted_images=few).fitted_to(data)
    assert (scenario.after_photos, scenario.drift_window) == (12, 12)
    assert scenario.seed_per_class == LoopScenario().seed_per_class and scenario.before_photos == 24
    assert scenario.labels_per_training <= 24 + 12 - 4
    with pytest.raises(ValueError, match="holds 9 photos: the loop needs at least 10"):
        LoopScenario(drifted_images=_empty_data_set(tmp_path / "fewer", {"a": 9})).fitted_to(data)
    with pytest.raises(ValueError, match="c is no class of the data set"):
        LoopScenario(drifted_images=_empty_data_set(tmp_path / "other", {"a": 9, "c": 9})).fitted_to(data)


def test_the_split_puts_the_drift_on_the_after_photos_only(tmp_path: Path) -> None:
    data = write_data_set(tmp_path / "data", per_class=30, size=48)
    scenario = LoopScenario(drift="grayscale").fitted_to(data)
    photos = split_photos(
        data,
        tmp_path / "split",
        seed_per_class=scenario.seed_per_class,
        before_count=scenario.before_photos,
        after_count=scenario.after_photos,
        drift=scenario.parsed_drift(),
    )
    assert photos.change == "a grayscale camera (no colour)" and photos.expected_features == ("saturation_mean",)
    assert all(p.name.startswith("grayscale-") for p in photos.after)
    assert min(inspect_image(p.data).stats["saturation_mean"] for p in photos.before) > 0.1
    assert max(inspect_image(p.data).stats["saturation_mean"] for p in photos.after) < 0.01
    names = [p.name.removeprefix("grayscale-") for p in (*photos.before, *photos.after)]
    seeds = [p.name for p in (tmp_path / "split" / "seed").rglob("*.jpg")]
    assert len(set(names) | set(seeds)) == len(names) + len(seeds), "a photo used twice"
    assert all(len({p.label for p in photos.after[i : i + 3]}) == 3 for i in range(9))  # the classes alternate


def test_the_split_takes_drifted_images_as_they_are(tmp_path: Path) -> None:
    data = write_data_set(tmp_path / "data", per_class=30, size=48)
    drifted = write_data_set(tmp_path / "drifted", per_class=4, size=48, seed=3, condition="jpeg-q10")
    photos = split_photos(
        data, tmp_path / "split", seed_per_class=10, before_count=12, after_count=12, drifted_dir=drifted
    )
    on_disk = {path.read_bytes(): path.parent.name for path in drifted.rglob("*.jpg")}
    assert len(photos.after) == 12 and all(on_disk[p.data] == p.label for p in photos.after)
    assert all(p.name.startswith("drifted-") for p in photos.after)
    assert photos.expected_features is None and str(drifted) in photos.change
