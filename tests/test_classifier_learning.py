"""Issue 15's pieces around the model: normalisation, calibration, the model registry, learning from
the triage desk, and the classify/eval commands' answers to a person's mistakes."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from classifiers import build_classifier
from classifiers.calibration import Row, choose, table
from classifiers.crossval import cross_validate, fold_of, log_loss, out_of_fold
from classifiers.crossval import main as crossval_main
from classifiers.normalize import normalize, romanize, squeeze
from classifiers.registry import SHIPPED, Registry, RegistryError
from classifiers.text_model import Example, TextModel, train_softmax
from gateway import cli
from gateway.config import Settings
from gateway.domain import cases, desk, workflow
from gateway.domain.city import load_city
from gateway.store import CaseRow, DeskLabelRow, import_city, make_engine, migrate, session_factory, utcnow
from gateway.world import SMS, World
from tests.test_classifier import write_tiny_city

CONFIG = Path("config")


# -- normalisation ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "normal"), [
    ("東湖路47號的路燈壞了", "东湖路47号的路灯坏了"),
    ("樓道裡堆滿雜物", "楼道里堆满杂物"),
    ("ＡＢＣ三號樓", "abc3号楼"),
    ("门口的垃圾桶满了", "门口的垃圾桶满了"),  # Simplified text is left alone
])
def test_normalize_makes_one_spelling(text, normal):
    assert normalize(text) == normal


def test_squeeze_drops_spacing_and_keeps_positions():
    squeezed, where, words = squeeze("near cui-hu huayuan, 东湖 no. 4")
    assert squeezed == "nearcuihuhuayuan|no4"
    assert "near cui-hu huayuan, 东湖 no. 4"[where[4]] == "c"
    assert [squeezed[a:b] for a, b in words] == ["near", "cui", "hu", "huayuan", "no", "4"]


def test_romanize_gives_toneless_pinyin():
    assert romanize("翠湖花园") == "cuihuhuayuan"
    assert romanize("绿地") == "lvdi"  # ü as v, as typed on a keyboard


# -- calibration -----------------------------------------------------------------------------------

def test_calibration_table_counts_routed_and_right():
    rows = table([0.9, 0.8, 0.4, 0.2], [True, True, False, True], thresholds=(0.0, 0.5, 0.85))
    assert rows == [Row(0.0, 1.0, 0.75), Row(0.5, 0.5, 1.0), Row(0.85, 0.25, 1.0)]


def test_calibration_picks_the_lowest_threshold_reaching_the_target_within_the_budget():
    rows = [Row(0.3, 1.0, 0.90), Row(0.5, 0.90, 0.97), Row(0.7, 0.86, 0.99), Row(0.9, 0.70, 1.0)]
    assert choose(rows, target=0.97, max_triage=0.15).threshold == 0.5


def test_calibration_falls_back_to_the_most_accurate_affordable_threshold():
    rows = [Row(0.3, 1.0, 0.85), Row(0.5, 0.90, 0.90), Row(0.7, 0.80, 0.99)]  # 0.7 sends 20 % to triage
    assert choose(rows, target=0.97, max_triage=0.15).threshold == 0.5


# -- training: penalty, scale, cross-validation -----------------------------------------------------

def test_the_l2_penalty_shrinks_the_weights():
    rows = [np.array([0, 1]), np.array([0, 2]), np.array([0, 3]), np.array([0, 4])]
    free = train_softmax(rows, [0, 0, 1, 1], 2, 5)
    penalised = train_softmax(rows, [0, 0, 1, 1], 2, 5, l2=0.1)
    assert np.abs(penalised).sum() < 0.75 * np.abs(free).sum()
    assert (penalised[1:3, 0] > penalised[1:3, 1]).all()  # still learns which way each word points


def test_the_category_scale_sharpens_confidence_and_keeps_the_order(tmp_path):
    settings = write_tiny_city(tmp_path)
    classifier = build_classifier(load_city(settings.city_dir), settings)
    text = normalize("垃圾桶满了")
    flat, sharp = (TextModel.train(classifier.featurizer, classifier.examples, classifier.segmenter.tokenize,
                                   category_scale=scale).predict(text, classifier.segmenter.tokenize(text))
                   for scale in (1.0, 3.0))
    assert [c for c, _ in flat.categories] == [c for c, _ in sharp.categories]
    assert sharp.categories[0][1] > flat.categories[0][1]


def test_folds_come_from_the_text_alone():
    texts = [f"appeal {i}" for i in range(500)]
    folds = [fold_of(t, 5) for t in texts]
    assert folds == [fold_of(t, 5) for t in texts] and set(folds) == {0, 1, 2, 3, 4}
    assert min(folds.count(k) for k in range(5)) > 70  # roughly even


def test_cross_validation_predicts_every_example_once(tmp_path):
    settings = write_tiny_city(tmp_path)
    classifier = build_classifier(load_city(settings.city_dir), settings)
    scores = cross_validate(classifier, classifier.examples, folds=3)
    assert len(scores.truth) == len(scores.probabilities) == len(classifier.examples)
    assert 0.0 <= scores.category <= 1.0 and 0.0 <= scores.appeal_type <= 1.0
    assert all(abs(sum(row) - 1) < 1e-6 for row in scores.probabilities)


def test_out_of_fold_scores_a_training_file_with_models_that_never_saw_its_appeals(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings = write_tiny_city(tmp_path)
    own = settings.config_dir / "classifier" / "examples-own.jsonl"
    own.write_text("".join(json.dumps({"text": text, "expected": {"category": "misc", "appeal_type": "ask"}},
                                      ensure_ascii=False) + "\n" for text in ["户口本丢了", "户口本丢了怎么补"]),
                   encoding="utf-8")
    classifier = build_classifier(load_city(settings.city_dir), settings)
    assert classifier.classify("户口本丢了", None).category == "misc"  # trained on it ...
    assert fold_of("户口本丢了", 2) == fold_of("户口本丢了怎么补", 2)  # one fold: its model saw neither
    report = out_of_fold(classifier, own, 2, settings.triage_department)
    assert report["appeals"] == 2
    assert report["accuracy"]["category"] == 0.0


def test_log_loss_rewards_a_sharper_scale_only_when_the_model_is_right():
    right = ([0.6, 0.5], [[0.6, 0.4], [0.5, 0.3, 0.2]])
    wrong = ([0.4], [[0.6, 0.4]])
    assert log_loss(*right, 1.0) == pytest.approx(-(np.log(0.6) + np.log(0.5)) / 2)
    assert log_loss(*right, 3.0) < log_loss(*right, 1.0)
    assert log_loss(*wrong, 3.0) > log_loss(*wrong, 1.0)


# -- the model registry ----------------------------------------------------------------------------

def test_registry_promotes_and_rolls_back(tmp_path):
    registry = Registry.at(tmp_path)
    with pytest.raises(RegistryError):
        registry.promote()
    with pytest.raises(RegistryError):
        registry.rollback()
    for version in ("v1", "v2"):
        registry.path(version).parent.mkdir(parents=True, exist_ok=True)
        registry.path(version).write_bytes(b"")
    registry.set_candidate("v1")
    assert registry.promote() == "v1" and registry.current() == "v1"
    assert registry.promote("v2") == "v2" and registry.history() == [SHIPPED, "v1", "v2"]
    assert registry.rollback() == "v1" and registry.current() == "v1"
    assert registry.rollback() == SHIPPED and registry.current() is None
    with pytest.raises(RegistryError):
        registry.rollback()


@pytest.mark.slow
def test_a_promoted_model_is_picked_up_without_restart_and_rolled_back(tmp_path):
    settings = write_tiny_city(tmp_path)
    city = load_city(settings.city_dir)
    serving = build_classifier(city, settings)  # a running worker
    trainer = build_classifier(city, settings)  # `gridline train` in another process
    text = "井盖丢了"
    before = serving.classify(text, None).category
    settled = "misc" if before != "misc" else "rubbish"  # the desk disagrees with the model
    corrections = [Example("井盖丢了", settled, None), Example("井盖没了好几天", settled, None),
                   Example("路口井盖被偷了", settled, None)]
    version = trainer.registry.new_version()
    trainer.save(trainer.train(corrections), version, len(corrections))
    trainer.registry.set_candidate(version)
    assert not serving.refresh()  # trained is not promoted
    trainer.registry.promote()
    assert serving.refresh() and serving.version == version
    assert serving.classify(text, None).category == settled
    trainer.registry.rollback()
    assert serving.refresh() and serving.version == "shipped"
    assert serving.classify(text, None).category == before


@pytest.mark.slow
def test_a_model_trained_for_other_keywords_is_not_served(tmp_path):
    settings = write_tiny_city(tmp_path)
    city = load_city(settings.city_dir)
    trainer = build_classifier(city, settings)
    version = trainer.registry.new_version()
    trainer.save(trainer.train(()), version, 0)
    trainer.registry.promote(version)
    keywords = settings.config_dir / "classifier" / "keywords.json"
    keywords.write_text(json.dumps({"categories": {"rubbish": ["垃圾", "废品"]}}), encoding="utf-8")
    assert build_classifier(city, settings).version == "shipped"


@pytest.mark.slow
def test_a_model_trained_with_other_features_is_not_served(tmp_path, monkeypatch):
    settings = write_tiny_city(tmp_path)
    city = load_city(settings.city_dir)
    monkeypatch.setattr("classifiers.model.TRAINING", "features 1 (before an upgrade)")
    trainer = build_classifier(city, settings)
    version = trainer.registry.new_version()
    trainer.save(trainer.train(()), version, 0)
    trainer.registry.promote(version)
    assert build_classifier(city, settings).version == version  # the same features: served
    monkeypatch.undo()  # the upgraded featurizer
    assert build_classifier(city, settings).version == "shipped"


# -- learning from the desk ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_world(tmp_path_factory):
    home = tmp_path_factory.mktemp("desk")
    settings = replace(Settings(config_dir=CONFIG), home=home)
    city = load_city(settings.city_dir)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        import_city(session, city)
    return World(settings, city, build_classifier(city, settings)), sessions


def test_what_the_desk_settles_is_stored_with_who_and_when(sample_world):
    world, sessions = sample_world
    text = "有件事想反映一下，门口那个东西一直没人管"
    with sessions() as session, session.begin():
        now = utcnow()
        verdict = world.classifier.classify(text, None)
        case = cases.open_case(session, city=world.city, settings=world.settings, channel=SMS,
                               reporter="+8617199000077", text=text, language="zh", verdict=verdict, now=now)
        workflow.settle(session, world, case, "operator:W0001", now, category="sanitation", grid="QH-DH-01-01")
        case_id = case.id
    with sessions() as session:
        [label] = session.query(DeskLabelRow).filter_by(case_id=case_id).all()
        assert (label.category, label.grid_code, label.settled_by) == ("sanitation", "QH-DH-01-01", "operator:W0001")
        assert (label.predicted_category, label.predicted_grid) == (verdict.category, verdict.grid)
        assert label.settled_at is not None and label.text == text
        assert Example(text, "sanitation", None) in desk.labelled_examples(session)


def test_a_grid_only_settlement_is_stored_but_trains_no_category(sample_world):
    world, sessions = sample_world
    text = "路口那边的护栏歪了"
    with sessions() as session, session.begin():
        now = utcnow()
        case = cases.open_case(session, city=world.city, settings=world.settings, channel=SMS,
                               reporter="+8617199000078", text=text, language="zh",
                               verdict=world.classifier.classify(text, None), now=now)
        workflow.settle(session, world, case, "operator:W0002", now, grid="QH-XS-01-01")
        case_id = case.id
    with sessions() as session:
        assert session.query(DeskLabelRow).filter_by(case_id=case_id).one().grid_code == "QH-XS-01-01"
        assert all(e.text != text for e in desk.labelled_examples(session))


# -- the commands' answers to a person's mistakes --------------------------------------------------

def test_eval_of_a_missing_file_is_one_line_and_exit_2(capsys):
    assert cli.main(["eval", "no/such/file.jsonl"]) == 2
    assert capsys.readouterr().err.strip() == "gridline eval: no/such/file.jsonl: no such file"


def test_out_of_fold_of_a_missing_file_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["crossval", "--out-of-fold", "no/such/file.jsonl"])
    with pytest.raises(SystemExit) as exited:
        crossval_main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == "crossval: no/such/file.jsonl: no such file"


def test_eval_of_a_file_without_labels_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"text": "路灯坏了"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert cli.main(["eval", str(path)]) == 2
    assert "no labels" in capsys.readouterr().err


def test_classify_of_non_json_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("路灯坏了\n"))
    assert cli.main(["classify"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "line 1" in error


@pytest.mark.parametrize("command", ["classify", "eval"])
def test_help_documents_the_input_format(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "JSON" in capsys.readouterr().out


# -- what the resident is told ---------------------------------------------------------------------

@pytest.mark.parametrize("language", ["zh", "en"])
def test_a_triage_acknowledgement_names_no_guess(language):
    city = load_city(CONFIG / "city")
    guess = city.categories["sanitation"]
    case = CaseRow(number="2612030001", language=language, queue="triage", category="sanitation",
                   grid_code="QH-DH-01-01", department="GRID_CENTER", assigned_worker_id=None)
    text = cases.acknowledgement(city, case)
    assert "2612030001" in text
    assert guess.name not in text and guess.name_en not in text
    assert city.grids["QH-DH-01-01"].name not in text and city.grids["QH-DH-01-01"].name_en not in text
    assert ("正在核实" if language == "zh" else "being confirmed") in text
