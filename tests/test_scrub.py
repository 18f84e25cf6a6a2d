"""The `scrub` stage: detectors with exact offsets, validators against look-alikes, the stage report
(no raw PII, leak check, gate) and the standalone `lmforge scrub` JSONL tool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from conf.schema import PipelineConfig
from conf.scrub import ScrubConfig
from flows.cli import main as cli_main
from flows.stages import STAGES
from tasks.common.data import Document, ShardWriter, read_documents
from tasks.common.stage import QualityGateError, check_gate, run_stage
from tasks.common.tracking import MetricLogger
from tasks.scrub import Scrubber, Span, gate
from tasks.scrub.detect import card_ok, iban_ok, luhn_ok, resolve, scrubbed_offsets, ssn_ok
from tasks.scrub.stage import REDACTIONS, REPORT, leak_check
from tests.helpers import documents_stage, seal

REPO = Path(__file__).resolve().parents[1]
SCRUBBER = Scrubber()

# (text, entity type, the PII inside the text)
POSITIVES = [
    ("Write to jane.doe@example.com today.", "EMAIL_ADDRESS", "jane.doe@example.com"),
    ("(c) Guido van Rossum <guido@python.org>", "EMAIL_ADDRESS", "guido@python.org"),
    ("Call +1 415-555-2671 now.", "PHONE_NUMBER", "+1 415-555-2671"),
    ("Office: (415) 555-2671, ask for Bob.", "PHONE_NUMBER", "(415) 555-2671"),
    ("London office +44 20 7946 0958.", "PHONE_NUMBER", "+44 20 7946 0958"),
    ("Paris: +33 1 42 68 53 00", "PHONE_NUMBER", "+33 1 42 68 53 00"),
    ("The server at 192.168.1.10 is down.", "IP_ADDRESS", "192.168.1.10"),
    ("ping 2001:db8::1 works", "IP_ADDRESS", "2001:db8::1"),
    ("link-local [fe80::1ff:fe23:4567:890a]:80", "IP_ADDRESS", "fe80::1ff:fe23:4567:890a"),
    ("card 4111 1111 1111 1111 exp 12/29", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("amex 378282246310005.", "CREDIT_CARD", "378282246310005"),
    ("mc 5555-5555-5555-4444", "CREDIT_CARD", "5555-5555-5555-4444"),
    ("SSN: 536-22-1234, DOB unknown", "US_SSN", "536-22-1234"),
    ("ssn 536 22 1234", "US_SSN", "536 22 1234"),
    ("IBAN DE89 3704 0044 0532 0130 00 THEN more", "IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
    ("pay GB82WEST12345698765432.", "IBAN_CODE", "GB82WEST12345698765432"),
]


@pytest.mark.parametrize(("text", "kind", "pii"), POSITIVES)
def test_each_type_found_with_exact_offsets(text, kind, pii):
    start = text.index(pii)
    assert SCRUBBER.find(text) == [Span(kind, start, start + len(pii))]


LOOKALIKES = [
    "card 4111 1111 1111 1112",  # Luhn fails
    "number 1234567812345678",  # Luhn ok? no: and no issuer prefix 1
    "GB82WEST12345698765433",  # IBAN checksum fails
    "DE89 3704 0044 0532 0130 0",  # one character short for DE
    "DE89 37040 044 0532 0130 00",  # groups not of 4
    "999.1.1.1 and 256.10.10.10",  # octets out of range
    "SSN 000-12-3456",
    "SSN 666-12-3456 or 900-12-3456",
    "SSN 123-00-4567 or 123-45-0000",
    "version 1.2.3.4",
    "pinned requests==1.2.3.4 and numpy>=1.2.3.4",
    "v1.2.3.4 and Release: 1.2.3.4",
    "__version__ = '1.2.3.4'",
    "see mod.1.2.3.4.x and 1.2.3.4.5 and snmp 1.3.6.1.4.1",
    "dates 2023-01-15, 15.01.2023, 01/15/2023",
    "at 2023-01-15 10:30:00 the job ran",
    "md5 5d41402abc4b2a76b9719d911017c592 and deadbeef4111111111111111",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "ISBN 978-0-306-40615-7 and ISBN-10: 0-306-40615-2",
    "978-0-306-40615-7 and 9780306406157",
    "x@y.shape and icon@2x.png and a..b@example.com",
    "slice x[1::2], C++ std::vector, cafe::bad",
    "INT_MAX = 2147483647; part no 33471-90901; Decimal('35236450.6')",
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_rejected(text):
    assert SCRUBBER.find(text) == [], [text[s.start : s.end] for s in SCRUBBER.find(text)]


@pytest.mark.parametrize(
    ("guarded", "plain", "pii"),
    [
        ("version 1.2.3.4", "host 1.2.3.4", "1.2.3.4"),
        ("pkg==1.2.3.4", "pkg at 1.2.3.4", "1.2.3.4"),
        ("numpy >= 1.2.3.4", 'if host == "10.0.0.1":', "10.0.0.1"),
        ("mod.1.2.3.4", "mod 1.2.3.4", "1.2.3.4"),
        ("deadbeef4111111111111111", "card 4111111111111111", "4111111111111111"),
        ("x@y.shape", "x@y.com", "x@y.com"),
    ],
)
def test_context_is_what_rejects(guarded, plain, pii):
    """The same value is found without the context that marks it as a non-PII look-alike."""
    assert SCRUBBER.find(guarded) == []
    assert [plain[s.start : s.end] for s in SCRUBBER.find(plain)] == [pii]


def test_digit_dense_text_and_unicode_separators():
    ips = " ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(500))
    assert [s.type for s in SCRUBBER.find(ips)] == ["IP_ADDRESS"] * 500
    assert SCRUBBER.find(" ".join(f"{i / 7:.4f}" for i in range(500))) == []  # a table of decimals
    text = "call 415\u2013555\u20132671 or +1\u00a0415\u00a0555\u00a02671"
    assert [text[s.start : s.end] for s in SCRUBBER.find(text)] == [
        "415\u2013555\u20132671",
        "+1\u00a0415\u00a0555\u00a02671",
    ]


def test_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert card_ok("378282246310005") and not card_ok("9780306406157")  # no card issuer starts with 9
    assert not card_ok("0000000000000000")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82WEST1234569876543")  # wrong length for GB
    assert ssn_ok("536", "22", "1234")
    assert not any(
        ssn_ok(*p)
        for p in [
            ("000", "12", "3456"),
            ("666", "12", "3456"),
            ("950", "12", "3456"),
            ("536", "00", "1234"),
            ("536", "22", "0000"),
        ]
    )


def test_scrub_replaces_with_placeholders_and_offsets_point_into_original():
    text = "Mail bob@corp.example.org, card 4111-1111-1111-1111; host 10.0.0.7."
    scrubbed, spans = SCRUBBER.scrub(text)
    assert scrubbed == "Mail <EMAIL_ADDRESS>, card <CREDIT_CARD>; host <IP_ADDRESS>."
    assert [(s.type, text[s.start : s.end]) for s in spans] == [
        ("EMAIL_ADDRESS", "bob@corp.example.org"),
        ("CREDIT_CARD", "4111-1111-1111-1111"),
        ("IP_ADDRESS", "10.0.0.7"),
    ]
    assert [scrubbed[a:b] for a, b in scrubbed_offsets(spans)] == [
        "<EMAIL_ADDRESS>",
        "<CREDIT_CARD>",
        "<IP_ADDRESS>",
    ]


def test_overlaps_resolve_longest_then_priority():
    spans = [
        Span("PHONE_NUMBER", 0, 10),
        Span("IP_ADDRESS", 5, 20),
        Span("CREDIT_CARD", 5, 20),
        Span("US_SSN", 21, 25),
    ]
    assert resolve(spans) == [Span("CREDIT_CARD", 5, 20), Span("US_SSN", 21, 25)]
    # same digits seen by two detectors: the card wins the tie over the (bare-digit) phone
    both = Scrubber(phone_bare_digits=True, phone_leniency="possible")
    assert both.find("pay 4111111111111111 now") == [Span("CREDIT_CARD", 4, 20)]


def test_entity_selection_and_phone_options():
    text = "jane@example.com or 415-555-2671"
    assert [s.type for s in Scrubber(entities=["EMAIL_ADDRESS"]).find(text)] == ["EMAIL_ADDRESS"]
    assert [s.type for s in Scrubber(entities=["PHONE_NUMBER"]).find(text)] == ["PHONE_NUMBER"]
    uk = "ring 020 7946 0958 today"
    assert Scrubber(phone_regions=["US"]).find(uk) == [] and len(Scrubber(phone_regions=["GB"]).find(uk)) == 1
    assert Scrubber(phone_regions=[]).find("call 415-555-2671") == []  # no region: only +country numbers
    assert len(Scrubber(phone_regions=[]).find("call +1 415-555-2671")) == 1
    part = "ref 33471-90901"  # a valid US number, but after a record-number word
    assert Scrubber().find(part) == [] and len(Scrubber().find("phone 33471-90901")) == 1
    odd = "at 33471-90901 today"  # valid, but not grouped like a phone: strict_grouping wants that
    assert len(Scrubber(phone_leniency="valid").find(odd)) == 1
    assert Scrubber(phone_leniency="strict_grouping").find(odd) == []
    assert Scrubber().find("at 4155552671") == []  # bare digits: a context word or phone_bare_digits
    assert len(Scrubber(phone_bare_digits=True).find("at 4155552671")) == 1
    assert len(Scrubber().find("call 4155552671")) == 1


def test_config_validation_names_the_key():
    with pytest.raises(ValidationError, match="phone_regions"):
        ScrubConfig(phone_regions=["XX"])
    with pytest.raises(ValidationError, match="entities"):
        ScrubConfig(entities=["EMAIL_ADDRESS", "EMAIL_ADDRESS"])
    with pytest.raises(ValidationError, match="entities"):
        ScrubConfig(entities=["PASSPORT"])
    assert ScrubConfig(phone_regions=["gb", "ZZ", "de"]).phone_regions == ["GB", "DE"]
    assert ScrubConfig(phone_region="gb,fr").phone_regions == ["GB", "FR"]  # the legacy single-region key
    assert ScrubConfig(phone_region="ZZ").phone_regions == []
    assert "US" in ScrubConfig().phone_regions and "JP" in ScrubConfig().phone_regions
    a, b = ScrubConfig(workers=1, batch_docs=8), ScrubConfig(workers=4, batch_docs=64)
    assert a.result_fields() == b.result_fields()


# ---- the stage --------------------------------------------------------------------------------------
PII_DOCS = [
    Document("a", "Contact alice@example.com or +1 415-555-2671 for access.", "t", {"module": "m1"}),
    Document("b", "No personal data here, just version 1.2.3.4 and 2023-01-15.", "t", {"module": "m2"}),
    Document(
        "c", "Refund to DE89 3704 0044 0532 0130 00, card 4111 1111 1111 1111, SSN 536-22-1234.", "t", {}
    ),
    Document(
        "d", "Hosts 10.20.30.40 and 2001:db8::7 leak; mail bob@corp.example.org.", "t", {"module": "m3"}
    ),
]
RAW_PII = [
    "alice@example.com",
    "415-555-2671",
    "DE89 3704",
    "4111 1111",
    "536-22-1234",
    "10.20.30.40",
    "2001:db8::7",
    "bob@corp.example.org",
]


class Recorder(MetricLogger):
    def __init__(self):
        self.items: list = []

    def log_metrics(self, metrics, step=None):
        self.items.append(dict(metrics))

    def log_dict(self, data, artifact_file):
        self.items.append(data)

    def log_table(self, data, artifact_file):
        self.items.append(data)

    def log_text(self, text, artifact_file):
        self.items.append(text)

    def log_artifact(self, path, artifact_path=None):
        self.items.append(Path(path).read_text())


def _run(tmp_path: Path, **pii) -> tuple:
    upstream = documents_stage(tmp_path / "up", PII_DOCS, stage="dedup")
    cfg = PipelineConfig(scrub=ScrubConfig(**pii))
    result = run_stage(STAGES["scrub"], cfg, {"dedup": upstream}, tmp_path / "artifacts")
    return result.manifest, list(read_documents(result.manifest))


def test_stage_scrubs_counts_and_reports_without_raw_pii(tmp_path):
    rec = Recorder()
    upstream = documents_stage(tmp_path / "up", PII_DOCS, stage="dedup")
    out = tmp_path / "out"
    out.mkdir()
    report = STAGES["scrub"].fn(ScrubConfig(), {"dedup": upstream}, out, rec)
    assert report.counts["documents"] == 4 and report.counts["documents_with_pii"] == 3
    assert {k: v for k, v in report.counts.items() if k.startswith("pii_")} == {
        "pii_total": 8,
        "pii_EMAIL_ADDRESS": 2,
        "pii_IBAN_CODE": 1,
        "pii_CREDIT_CARD": 1,
        "pii_US_SSN": 1,
        "pii_IP_ADDRESS": 2,
        "pii_PHONE_NUMBER": 1,
        "pii_left": 0,
    }
    docs = [json.loads(line) for line in (out / "documents" / "shard-00000.jsonl").read_text().splitlines()]
    assert [d["id"] for d in docs] == ["a", "b", "c", "d"] and docs[0]["meta"] == {"module": "m1"}
    assert docs[0]["text"] == "Contact <EMAIL_ADDRESS> or <PHONE_NUMBER> for access."
    assert docs[1]["text"] == PII_DOCS[1].text
    assert docs[2]["text"] == "Refund to <IBAN_CODE>, card <CREDIT_CARD>, SSN <US_SSN>."
    # redactions: offsets into the original text, and no PII in the file
    red = [json.loads(line) for line in (out / REDACTIONS).read_text().splitlines()]
    assert [r["id"] for r in red] == ["a", "c", "d"]
    first = red[0]["pii"][0]
    assert PII_DOCS[0].text[first["start"] : first["end"]] == "alice@example.com"
    report_text = (out / REPORT).read_text()
    saved = json.loads(report_text)
    assert saved["pii_left"] == 0 and saved["by_type"]["IP_ADDRESS"] == 2
    contexts = [s["context"] for s in saved["samples"]]
    assert "Contact <EMAIL_ADDRESS> or <PHONE_NUMBER> for access." in contexts
    everything = report_text + (out / REDACTIONS).read_text() + json.dumps(rec.items, default=str)
    leaked = [p for p in RAW_PII if p in everything]
    assert not leaked, f"report/logs contain raw PII: {leaked}"


def test_stage_through_runner_with_workers_gives_same_output(tmp_path):
    m1, docs1 = _run(tmp_path / "one", workers=1, batch_docs=1)
    m2, docs2 = _run(tmp_path / "two", workers=2, batch_docs=1)
    assert m1.stage_hash == m2.stage_hash  # workers/batch_docs are not result-affecting
    assert [d.text for d in docs1] == [d.text for d in docs2]
    assert {n: e.sha256 for n, e in m1.files.items()} == {n: e.sha256 for n, e in m2.files.items()}
    assert m1.counts["pii_left"] == 0 and gate(ScrubConfig(), m1) is None


def test_stage_masks_ids_and_meta_that_hold_pii(tmp_path):
    """Ids and meta fields (file names, urls) are scrubbed too; a masked id keeps a hash: ids stay unique."""
    raw = [
        Document(
            "files:notes-bob@example.com.txt",
            "call +44 20 7946 0958",
            "t",
            {"path": "/d/bob@example.com.txt"},
        ),
        Document("files:notes-eve@example.com.txt", "nothing here", "t", {"path": "/d/eve@example.com.txt"}),
        Document("files:plain.txt", "nothing here", "t", {"path": "/d/plain.txt", "line": 3}),
    ]
    upstream = documents_stage(tmp_path / "up", raw, stage="dedup")
    result = run_stage(STAGES["scrub"], PipelineConfig(), {"dedup": upstream}, tmp_path / "artifacts")
    docs = list(read_documents(result.manifest))
    assert docs[0].id.startswith("files:<EMAIL_ADDRESS>.txt~") and docs[0].id != docs[1].id
    assert docs[0].meta == {"path": "/d/<EMAIL_ADDRESS>.txt"} and docs[0].text == "call <PHONE_NUMBER>"
    assert (docs[2].id, docs[2].meta) == ("files:plain.txt", {"path": "/d/plain.txt", "line": 3})
    red = (Path(result.manifest.path) / REDACTIONS).read_text()
    assert json.loads(red)["id"] == docs[0].id and "bob@" not in red


def test_leak_check_counts_pii_left_and_gate_fails(tmp_path):
    with ShardWriter(tmp_path) as w:  # a "scrubbed" output that still holds PII
        w.write_all(PII_DOCS)
    left, ids = leak_check(w.paths, ScrubConfig())
    assert sum(left.values()) == 8 and ids == ["a", "c", "d"]
    leaky = seal(tmp_path, "scrub", counts={"pii_left": 8}, extra={"leak_documents": ids})
    message = gate(ScrubConfig(), leaky)
    assert message and "8 PII" in message and "scrub.max_pii_left=0" in message and "a, c, d" in message
    assert gate(ScrubConfig(max_pii_left=8), leaky) is None
    with pytest.raises(QualityGateError, match="scrub"):
        check_gate(STAGES["scrub"], ScrubConfig(), leaky)


# ---- the standalone CLI -----------------------------------------------------------------------------
def _write_jsonl(path: Path) -> None:
    lines = [
        json.dumps({"id": 1, "text": "Mail jane@example.com or +1 415-555-2671.", "lang": "en"}),
        "{not json",
        json.dumps({"id": 2, "text": "version 1.2.3.4, nothing else", "tags": ["x"]}),
        json.dumps({"id": 3, "body": "no text field"}),
        "",
        json.dumps({"id": 4, "text": "héllo → ip 10.1.2.3"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_cli_scrubs_jsonl_keeps_fields_and_reports_bad_lines(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_jsonl(src)
    assert cli_main(["scrub", str(src), str(dst)]) == 1  # bad lines were skipped
    err = capsys.readouterr().err
    assert f"{src}:2: bad JSON" in err and f"{src}:4: no string field 'text'" in err
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert out == [
        {
            "id": 1,
            "text": "Mail <EMAIL_ADDRESS> or <PHONE_NUMBER>.",
            "lang": "en",
            "pii": [
                {"type": "EMAIL_ADDRESS", "start": 5, "end": 21},
                {"type": "PHONE_NUMBER", "start": 25, "end": 40},
            ],
        },
        {"id": 2, "text": "version 1.2.3.4, nothing else", "tags": ["x"], "pii": []},
        {
            "id": 4,
            "text": "héllo → ip <IP_ADDRESS>",
            "pii": [{"type": "IP_ADDRESS", "start": 11, "end": 19}],
        },
    ]
    assert "héllo → ip 10.1.2.3"[11:19] == "10.1.2.3"  # offsets are code points of the original

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"body": "call +44 20 7946 0958", "text": 1}) + "\n")
    assert cli_main(["scrub", str(good), str(tmp_path / "o2.jsonl"), "--text-field", "body"]) == 0
    rec = json.loads((tmp_path / "o2.jsonl").read_text())
    assert rec == {
        "body": "call <PHONE_NUMBER>",
        "text": 1,
        "pii": [{"type": "PHONE_NUMBER", "start": 5, "end": 21}],
    }
    assert cli_main(["scrub", str(tmp_path / "missing.jsonl"), str(dst)]) == 2
    assert cli_main(["scrub", str(good), str(dst), "--entities", "EMAIL_ADDRESS,PASSPORT"]) == 2
    assert "--entities" in capsys.readouterr().err


def test_cli_subprocess(tmp_path):
    exe = REPO / ".venv" / "bin" / "lmforge"
    if not exe.exists():
        exe = Path(sys.executable).with_name("lmforge")
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(json.dumps({"id": i, "text": f"user{i}@example.com"}) for i in range(3)) + "\n")
    proc = subprocess.run(
        [str(exe), "scrub", str(src), str(dst)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "scrubbed 3 records (3 with PII: EMAIL_ADDRESS=3)" in proc.stderr
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in out] == [0, 1, 2]
    assert all(
        r["text"] == "<EMAIL_ADDRESS>" and r["pii"] == [{"type": "EMAIL_ADDRESS", "start": 0, "end": 17}]
        for r in out
    )
