"""Reading is total: any value under the reserved prefix decodes or is reported, never raises."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_approvals import tags as T
from mlflow_approvals.lifecycle import (
    ApprovalRequest,
    RequestRecord,
    Requirement,
    SignOff,
    Status,
    Target,
)

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
RID = "0123456789ab"
EXAMPLES = 1000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
times = st.sampled_from(
    ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z", "", "yesterday", 5]
)


def request_fact(**overrides: Any) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "id": RID,
        "name": "m",
        "version": "1",
        "target": {
            "kind": "alias",
            "value": "champion",
            "action": "set",
            "archive_existing_versions": False,
        },
        "requester": "alice",
        "created_at": "2026-05-01T00:00:00Z",
        "comment": None,
        "rule": "production",
        "levels": [[["ds", 1]]],
        "separation_of_duties": True,
        "expires_at": None,
        "policy_hash": "sha256:x",
    }
    fact.update(overrides)
    return fact


# a request fact with one field replaced by anything JSON can hold
mutated_requests = st.builds(
    lambda key, value: json.dumps(request_fact(**{key: value})),
    st.sampled_from(sorted(request_fact())),
    json_values | times,
)
fact_keys = st.sampled_from(
    [
        T.request_key(RID),
        T.signoff_key(RID, "bob"),
        T.cancel_key(RID),
        T.applied_key(RID),
        T.expired_key(RID),
        T.breakglass_key(RID),
        T.superseded_key(RID),
        T.invalidated_key(RID),
        T.INDEX_KEY,
        T.PREFIX + "r.not-an-id",
        T.PREFIX + "anything",
    ]
)
fact_values = (
    st.text(max_size=60)
    | json_values.map(json.dumps)
    | mutated_requests
    | st.builds(
        lambda actor, time: json.dumps({"actor": actor, "time": time, "decision": "approve"}),
        json_values,
        times,
    )
)


def _read_all(tags: dict[str, str]) -> list[ApprovalRequest]:
    facts = T.VersionFacts("m", "1", tags)
    found = facts.all_requests(NOW)
    for r in found:
        r.describe(), r.history(), r.to_dict(), T.request_facts(r)
    facts.event_hashes()
    return found


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.dictionaries(fact_keys, fact_values, max_size=6))
def test_any_reserved_values_read_without_raising(tags: dict[str, str]) -> None:
    """Every reserved tag is either decoded or listed in `malformed`, once; nothing raises."""
    _read_all(tags)
    facts = T.VersionFacts("m", "1", tags)
    decoded = {T.request_key(rid) for rid in facts.requests}
    decoded |= {T.signoff_key(rid, s.actor) for rid, sl in facts.signoffs.items() for s in sl}
    for key, endings in (
        (T.cancel_key, facts.cancelled),
        (T.applied_key, facts.applied),
        (T.expired_key, facts.expired),
        (T.breakglass_key, facts.emergency),
        (T.superseded_key, facts.superseded),
        (T.invalidated_key, facts.invalidated),
    ):
        decoded |= {key(rid) for rid in endings}
    if T.INDEX_KEY in tags and T.INDEX_KEY not in facts.malformed:
        decoded.add(T.INDEX_KEY)
    assert decoded.isdisjoint(facts.malformed)
    assert decoded | set(facts.malformed) == set(tags)


@settings(max_examples=EXAMPLES, deadline=None)
@given(mutated_requests)
def test_a_mutated_request_fact_decodes_exactly_or_is_reported(value: str) -> None:
    """A request fact with any one field changed is decoded with sane types, or reported."""
    facts = T.VersionFacts("m", "1", {T.request_key(RID): value})
    if RID in facts.requests:
        record = facts.requests[RID]
        assert record.created_at.tzinfo is not None
        assert all(q.count >= 1 for lvl in record.levels for q in lvl)
        assert record.target.kind in ("stage", "alias")
        assert facts.request(RID, NOW).status in Status
    else:
        assert T.request_key(RID) in facts.malformed


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    actor=st.text(min_size=1, max_size=40),
    comment=st.none() | st.text(max_size=40),
    minutes=st.integers(min_value=0, max_value=10**6),
)
def test_facts_as_written_read_back_as_written(
    actor: str, comment: str | None, minutes: int
) -> None:
    """What the encoders write, the decoders read back equal (any actor name or comment)."""
    when = NOW - timedelta(minutes=minutes)
    record = RequestRecord(
        id=RID,
        name="m",
        version="1",
        target=Target("stage", "Production"),
        requester=actor,
        created_at=when,
        comment=comment,
        rule="production",
        levels=((Requirement("ds", 1),),),
        separation_of_duties=True,
        expires_at=None,
        policy_hash="sha256:x",
        holders=("3",),
    )
    signoff = SignOff(actor, "approve", "ds", 1, comment, when, None, None)
    tags = {
        T.request_key(RID): T.encode_request(record),
        T.signoff_key(RID, actor): T.encode_signoff(signoff),
    }
    facts = T.VersionFacts("m", "1", tags)
    assert facts.malformed == {}
    assert facts.requests[RID] == record
    assert facts.signoffs[RID] == [signoff]
    assert facts.request(RID, NOW).status is Status.APPROVED


def test_signoff_stored_under_another_persons_key_is_reported():
    """A sign-off fact whose signer is not the person its key names is not counted."""
    signoff = SignOff("mallory", "approve", "ds", 1, None, NOW, None, None)
    tags = {
        T.request_key(RID): json.dumps(request_fact()),
        T.signoff_key(RID, "bob"): T.encode_signoff(signoff),
    }
    facts = T.VersionFacts("m", "1", tags)
    assert facts.signoffs == {}
    assert "another person's key" in facts.malformed[T.signoff_key(RID, "bob")]
