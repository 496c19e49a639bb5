"""The trace schema and the summary arithmetic shared by simulator and executor."""

import json

import pytest

from nasalloc.sim.errors import UserError
from nasalloc.sim.trace import TraceEvent, TraceWriter, busy_intervals, read_trace, summarize, write_trace


def ev(t, event, trial, epoch=None, metric=None, devices=(), **kw):
    return TraceEvent(time=t, event=event, trial=trial, epoch=epoch, metric=metric, devices=tuple(devices), **kw)


def two_trials():
    # trial 0 on device 0 from 0 to 10 (completes); trial 1 on devices 0 and 1 from 10 to 14 (stopped)
    return [
        ev(0.0, "start", 0, 0, devices=[0], config={"lr": 0.1}),
        ev(5.0, "result", 0, 1, 0.5, [0], test_metric=0.45),
        ev(10.0, "result", 0, 2, 0.8, [0], test_metric=0.7),
        ev(10.0, "complete", 0, 2, devices=[0]),
        ev(10.0, "start", 1, 0, devices=[0, 1], config={"lr": 0.2}),
        ev(14.0, "result", 1, 1, 0.6, [0, 1]),
        ev(14.0, "stop", 1, 1, devices=[0, 1]),
    ]


def test_summary_arithmetic_on_a_hand_made_trace():
    s = summarize(two_trials(), mode="max", n_devices=2, scheduler="asha", gpus_per_trial=1, target=0.6)
    assert s.makespan_s == 14.0
    assert s.best_metric == 0.8 and s.best_trial == 0 and s.best_test_metric == 0.7
    assert s.time_to_target_s == 10.0  # 0.8 at t=10 is the first result >= 0.6
    # busy: device 0 from 0 to 14, device 1 from 10 to 14 -> 18 device-seconds of 28
    assert s.gpu_utilization == pytest.approx(18 / 28)
    assert s.device_hours == pytest.approx(18 / 3600)
    assert (s.trials, s.completed, s.stopped, s.failed, s.epochs_trained) == (2, 1, 1, 0, 3)


def test_min_mode_and_unreached_target():
    s = summarize(two_trials(), mode="min", n_devices=2, scheduler="asha", gpus_per_trial=1, target=0.1)
    assert s.best_metric == 0.5 and s.time_to_target_s is None


def test_shared_device_is_counted_once():
    events = [
        ev(0, "start", 0, 0, devices=[0]), ev(0, "start", 1, 0, devices=[0]),
        ev(4, "complete", 0, 1, devices=[0]), ev(6, "complete", 1, 1, devices=[0]),
    ]
    assert busy_intervals(events) == {0: [(0, 6)]}


def test_write_read_round_trip_and_byte_stability(tmp_path):
    path = tmp_path / "trace.jsonl"
    write_trace(path, two_trials())
    first = path.read_bytes()
    assert read_trace(path) == two_trials()
    write_trace(path, read_trace(path))
    assert path.read_bytes() == first
    line = json.loads(first.splitlines()[0])
    assert list(line) == ["time", "event", "trial", "epoch", "metric", "devices", "config"]


def test_asked_after_and_resume_epoch_are_written_only_on_the_events_that_carry_them(tmp_path):
    events = [
        ev(1.0, "resume", 1, 1, devices=[0, 1], asked_after=7, info="waited for devices"),
        ev(2.0, "fail", 1, 2, devices=[0, 1], resume_epoch=0, info="rank 0 died"),
        ev(2.0, "pause", 2, 1, devices=[1], info="reallocate"),
    ]
    path = tmp_path / "trace.jsonl"
    write_trace(path, events)
    lines = path.read_text().splitlines()
    assert lines[0].endswith('"devices": [0, 1], "asked_after": 7, "info": "waited for devices"}')
    assert lines[1].endswith('"devices": [0, 1], "resume_epoch": 0, "info": "rank 0 died"}')
    assert "asked_after" not in lines[2] and "resume_epoch" not in lines[2]
    assert read_trace(path) == events


@pytest.mark.parametrize(("line", "asked_after", "resume_epoch", "info"), [
    # written before the fields existed: the values were at the end of info
    ('{"time": 1, "event": "start", "trial": 4, "epoch": 0, "devices": [1], "config": {}, '
     '"info": "waited for devices; asked_after=12"}', 12, None, "waited for devices"),
    ('{"time": 1, "event": "fail", "trial": 4, "epoch": 3, "devices": [1], '
     '"info": "RuntimeError: boom; resume_epoch=2"}', None, 2, "RuntimeError: boom"),
    # only where the event carried it: a pause's info is left as it is
    ('{"time": 1, "event": "pause", "trial": 4, "epoch": 3, "devices": [1], "info": "x; resume_epoch=2"}',
     None, None, "x; resume_epoch=2"),
    # the typed field wins over text in info
    ('{"time": 1, "event": "fail", "trial": 4, "epoch": 3, "devices": [1], "resume_epoch": 1, '
     '"info": "said resume_epoch=2"}', None, 1, "said resume_epoch=2"),
])
def test_old_traces_read_into_the_typed_fields(tmp_path, line, asked_after, resume_epoch, info):
    path = tmp_path / "trace.jsonl"
    path.write_text(line + "\n")
    (event,) = read_trace(path)
    assert (event.asked_after, event.resume_epoch, event.info) == (asked_after, resume_epoch, info)


def test_journal_appends_and_a_torn_tail_is_tolerated(tmp_path):
    path = tmp_path / "trace.jsonl"
    with TraceWriter(path) as journal:
        for e in two_trials()[:3]:
            journal.write(e)
    with open(path, "a") as fh:
        fh.write('{"time": 11.0, "event": "res')  # killed mid-write
    assert len(read_trace(path, tolerate_torn_tail=True)) == 3
    with pytest.raises(UserError, match=r"trace.jsonl:4: not a JSON object"):
        read_trace(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"time": 1, "event": "boom", "trial": 0}', "event='boom': allowed"),
        ('{"time": -1, "event": "start", "trial": 0}', "must be a finite number >= 0"),
        ('{"event": "start", "trial": 0}', "missing key 'time'"),
        ('[1, 2]', "not a JSON object"),
    ],
)
def test_bad_trace_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"time": 0, "event": "start", "trial": 0, "epoch": 0}\n' + line + "\n")
    with pytest.raises(UserError, match=message) as info:
        read_trace(path)
    assert ":2:" in str(info.value)
