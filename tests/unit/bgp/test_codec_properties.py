"""Property tests: decode(encode(x)) == x for every message type, and whatever bytes arrive,
the reader and the decoders raise only BGPError (never IndexError, struct.error, ...)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgplb.bgp import (
    AFI,
    IPV4_UNICAST,
    IPV6_UNICAST,
    SAFI,
    AddPath,
    AddPathFamily,
    Aggregator,
    AsPathSegment,
    AsPathSegmentType,
    BGPError,
    BGPRole,
    EnhancedRouteRefresh,
    ExtendedCommunity,
    ExtendedMessage,
    FourOctetAS,
    Fqdn,
    GracefulRestart,
    GracefulRestartFamily,
    Keepalive,
    LargeCommunity,
    Message,
    MessageReader,
    MPReachNLRI,
    MPUnreachNLRI,
    Multiprotocol,
    Negotiated,
    Notification,
    Open,
    Origin,
    PathAttributes,
    Prefix,
    RouteRefresh,
    RouteRefreshCapability,
    UnknownAttribute,
    UnknownCapability,
    Update,
    decode,
    encode,
)

U32 = st.integers(0, 2**32 - 1)
ASN = st.integers(1, 2**32 - 1)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def prefixes(draw: st.DrawFn, afi: AFI) -> Prefix:
    bits = 32 if afi == AFI.IPV4 else 128
    length = draw(st.integers(0, bits))
    address = draw(st.integers(0, 2**bits - 1)) >> (bits - length) << (bits - length)
    return Prefix(afi, address, length)


def prefix_lists(afi: AFI, max_size: int = 30) -> st.SearchStrategy[tuple[Prefix, ...]]:
    return st.lists(prefixes(afi), max_size=max_size).map(tuple)


unicast_v4 = st.integers(0x01000000, 0xDFFFFFFF).map(IPv4Address)
v6addr = st.integers(0, 2**128 - 1).map(IPv6Address)


@st.composite
def as_paths(draw: st.DrawFn, four_octet: bool) -> tuple[AsPathSegment, ...]:
    def seg(
        types: list[AsPathSegmentType], asn: st.SearchStrategy[int] = ASN
    ) -> st.SearchStrategy[AsPathSegment]:
        return st.builds(
            AsPathSegment,
            st.sampled_from(types),
            st.lists(asn, min_size=1, max_size=12).map(tuple),
        )

    confed = [AsPathSegmentType.AS_CONFED_SEQUENCE, AsPathSegmentType.AS_CONFED_SET]
    plain = [AsPathSegmentType.AS_SEQUENCE, AsPathSegmentType.AS_SET]
    if four_octet:
        return tuple(draw(st.lists(seg(plain + confed), max_size=5)))
    # towards a 2-octet peer confederation segments lead the path (RFC 5065 §5.3) and hold
    # 2-octet member ASNs: AS4_PATH never carries them (RFC 6793 §4.2.2)
    leading = draw(st.lists(seg(confed, st.integers(1, 65535)), max_size=2))
    return tuple(leading + draw(st.lists(seg(plain), max_size=4)))


@st.composite
def path_attributes(
    draw: st.DrawFn, four_octet: bool, classic_nlri: bool, mp_nlri: bool = False
) -> PathAttributes:
    mp_reach = None
    if mp_nlri or draw(st.booleans()):
        afi = draw(st.sampled_from([AFI.IPV4, AFI.IPV6]))
        if afi == AFI.IPV4:
            hops: tuple[IPv4Address | IPv6Address, ...] = (draw(unicast_v4),)
        else:
            hops = tuple(draw(st.lists(v6addr, min_size=1, max_size=2)))
        nlri = draw(prefix_lists(afi, 20).filter(lambda t: bool(t) or not mp_nlri))
        mp_reach = MPReachNLRI(afi, SAFI.UNICAST, hops, nlri)
    need = classic_nlri or (mp_reach is not None and bool(mp_reach.nlri))
    origin = draw(st.sampled_from(list(Origin)) if need else st.none() | st.sampled_from(Origin))
    mp_unreach = None
    if draw(st.booleans()):
        afi = draw(st.sampled_from([AFI.IPV4, AFI.IPV6]))
        mp_unreach = MPUnreachNLRI(afi, SAFI.UNICAST, draw(prefix_lists(afi, 20)))
    unknown_codes = draw(st.lists(st.integers(200, 254), unique=True, max_size=3))
    return PathAttributes(
        origin=origin,
        as_path=draw(as_paths(four_octet)),
        next_hop=draw(unicast_v4 if classic_nlri else st.none() | unicast_v4),
        med=draw(st.none() | U32),
        local_pref=draw(st.none() | U32),
        atomic_aggregate=draw(st.booleans()),
        aggregator=draw(st.none() | st.builds(Aggregator, ASN, unicast_v4)),
        communities=tuple(draw(st.lists(U32, max_size=8))),
        extended_communities=tuple(
            draw(st.lists(st.binary(min_size=8, max_size=8).map(ExtendedCommunity), max_size=4))
        ),
        large_communities=tuple(
            draw(st.lists(st.builds(LargeCommunity, U32, U32, U32), unique=True, max_size=4))
        ),
        mp_reach=mp_reach,
        mp_unreach=mp_unreach,
        unknown=tuple(
            UnknownAttribute(0xE0, code, draw(st.binary(max_size=300))) for code in unknown_codes
        ),
    )


@st.composite
def updates(draw: st.DrawFn, four_octet: bool) -> Update:
    nlri = draw(prefix_lists(AFI.IPV4))
    withdrawn = draw(prefix_lists(AFI.IPV4))
    attrs = draw(path_attributes(four_octet, bool(nlri)))
    if not draw(st.booleans()) and not nlri:
        attrs = PathAttributes(mp_unreach=attrs.mp_unreach)
    return Update(withdrawn, attrs, nlri)


def negotiated(four_octet: bool) -> Negotiated:
    return Negotiated(
        four_octet_as=four_octet,
        extended_message=True,
        families=frozenset({IPV4_UNICAST, IPV6_UNICAST}),
        ebgp=False,
    )


def roundtrip(msg: Message, neg: Negotiated) -> Message:
    wire = encode(msg, neg)
    reader = MessageReader()
    reader.extended = neg.extended_message
    reader.feed(wire)
    framed = reader.next_message()
    assert framed is not None and reader.buffered == 0
    return decode(framed[0], framed[1], neg)


@SETTINGS
@given(st.booleans().flatmap(lambda four: st.tuples(st.just(four), updates(four))))
def test_update_roundtrip(case: tuple[bool, Update]) -> None:
    four, msg = case
    assert roundtrip(msg, negotiated(four)) == msg


@SETTINGS
@given(path_attributes(True, False, mp_nlri=True))
def test_mp_only_update_roundtrip(attrs: PathAttributes) -> None:
    msg = Update(attributes=attrs)
    assert roundtrip(msg, negotiated(True)) == msg


UNKNOWN_CAP_CODES = st.integers(0, 255).filter(lambda c: c not in {1, 2, 6, 9, 64, 65, 69, 70, 73})
capabilities = st.one_of(
    st.builds(Multiprotocol, st.integers(0, 65535), st.integers(0, 255)),
    st.just(RouteRefreshCapability()),
    st.just(ExtendedMessage()),
    st.just(EnhancedRouteRefresh()),
    st.builds(
        GracefulRestart,
        st.integers(0, 4095),
        st.booleans(),
        st.booleans(),
        st.lists(
            st.builds(
                GracefulRestartFamily, st.integers(0, 65535), st.integers(0, 255), st.booleans()
            ),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(
        AddPath,
        st.lists(
            st.builds(AddPathFamily, st.integers(0, 65535), st.integers(0, 255), st.integers(0, 3)),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(BGPRole, st.integers(0, 255)),
    st.builds(Fqdn, st.text(max_size=20), st.text(max_size=20)),
    st.builds(UnknownCapability, UNKNOWN_CAP_CODES, st.binary(max_size=40)),
)


@st.composite
def opens(draw: st.DrawFn) -> Open:
    asn = draw(ASN)
    caps = draw(st.lists(capabilities, max_size=40))
    if asn > 65535 or draw(st.booleans()):
        caps.insert(draw(st.integers(0, len(caps))), FourOctetAS(asn))
    hold = draw(st.just(0) | st.integers(3, 65535))
    router_id = draw(st.integers(1, 0xDFFFFFFF).map(IPv4Address))
    return Open(asn, hold, router_id, tuple(caps))


@SETTINGS
@given(opens())
def test_open_roundtrip(msg: Open) -> None:
    assert roundtrip(msg, Negotiated()) == msg


other_messages = st.one_of(
    st.just(Keepalive()),
    st.builds(Notification, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=200)),
    st.builds(RouteRefresh, st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255)),
)


@SETTINGS
@given(other_messages)
def test_other_messages_roundtrip(msg: Message) -> None:
    assert roundtrip(msg, Negotiated()) == msg


@SETTINGS
@given(st.text(max_size=300))
def test_shutdown_message_roundtrip_and_truncation(text: str) -> None:
    msg = Notification.cease_shutdown(2, text)
    assert len(msg.data) <= 256
    assert msg.data[0] == len(msg.data) - 1
    shown = msg.shutdown_message
    assert shown is not None and text.startswith(shown)
    if len(text.encode()) <= 255:
        assert shown == text


# --- robustness ----------------------------------------------------------------------------


def decode_only_bgp_error(msg_type: int, body: bytes, neg: Negotiated) -> Message | None:
    try:
        return decode(msg_type, body, neg)
    except BGPError as exc:
        assert "internal decoder error" not in exc.reason
        assert 1 <= exc.code <= 7
        return None


NEGS = st.builds(
    Negotiated,
    four_octet_as=st.booleans(),
    extended_message=st.booleans(),
    families=st.sampled_from([frozenset({IPV4_UNICAST}), frozenset({IPV4_UNICAST, IPV6_UNICAST})]),
    ebgp=st.booleans(),
)


@settings(deadline=None, max_examples=500)
@given(st.integers(0, 7), st.binary(max_size=600), NEGS)
def test_arbitrary_bodies_raise_only_bgp_error(msg_type: int, body: bytes, neg: Negotiated) -> None:
    decode_only_bgp_error(msg_type, body, neg)


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=400), st.booleans(), NEGS)
def test_arbitrary_streams_raise_only_bgp_error(data: bytes, marker: bool, neg: Negotiated) -> None:
    reader = MessageReader()
    reader.extended = neg.extended_message
    reader.feed((b"\xff" * 16 if marker else b"") + data)
    try:
        while (framed := reader.next_message()) is not None:
            decode_only_bgp_error(framed[0], framed[1], neg)
    except BGPError:
        pass


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes, Negotiated]:
    four = draw(st.booleans())
    msg = draw(st.one_of(updates(four), opens(), other_messages))
    neg = negotiated(four)
    wire = bytearray(encode(msg, neg))
    body = wire[19:]
    for _ in range(draw(st.integers(1, 4))):
        if not body:
            break
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "byte"]))
        pos = draw(st.integers(0, len(body) - 1))
        if kind == "flip":
            body[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            body[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del body[pos:]
        else:
            body[pos:pos] = draw(st.binary(min_size=1, max_size=4))
    return wire[18], bytes(body), neg


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_raise_only_bgp_error_or_recover(
    case: tuple[int, bytes, Negotiated],
) -> None:
    msg_type, body, neg = case
    msg = decode_only_bgp_error(msg_type, body, neg)
    if isinstance(msg, Update):
        # whatever was recovered must itself be encodable and stable
        for err in msg.errors:
            assert isinstance(err, BGPError) and err.action is not None
        if msg.errors and any(e.action.value == "treat-as-withdraw" for e in msg.errors):
            assert msg.announced == ()


@settings(max_examples=300)
@given(st.sampled_from([4, 6]), st.data())
def test_prefix_network_is_what_ipaddress_builds(version: int, data: st.DataObject) -> None:
    # Prefix.network builds the ipaddress object without re-parsing; it must be
    # indistinguishable from the stdlib's own (equality, hash, attributes, hosts of /31../32)
    import ipaddress

    from bgplb.bgp.families import AFI
    from bgplb.bgp.prefix import Prefix

    bits = 32 if version == 4 else 128
    length = data.draw(st.integers(0, bits))
    address = data.draw(st.integers(0, (1 << bits) - 1)) >> (bits - length) << (bits - length)
    prefix = Prefix(AFI.IPV4 if version == 4 else AFI.IPV6, address, length)
    ours = prefix.network
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    theirs = cls((address, length))
    assert type(ours) is type(theirs)
    assert ours == theirs and hash(ours) == hash(theirs) and repr(ours) == repr(theirs)
    assert ours.netmask == theirs.netmask and ours.prefixlen == theirs.prefixlen
    assert ours.broadcast_address == theirs.broadcast_address
    assert vars(ours).keys() == vars(theirs).keys()
    if length >= bits - 1:
        assert list(ours.hosts()) == list(theirs.hosts())
    assert Prefix.from_network(ours) == prefix


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=40),
    st.none() | st.tuples(st.integers(0, 40), st.integers(0, 31)),
    st.integers(0, 4),
)
def test_runs_of_ipv4_host_prefixes_decode_like_any_other(addresses, other, cut) -> None:
    # NLRI made only of /32s takes a bulk path; with one other length, or cut short, it must
    # give what the general decoder gives: the same prefixes, or the same error
    import pytest as _pytest

    from bgplb.bgp.errors import BGPError
    from bgplb.bgp.families import AFI
    from bgplb.bgp.prefix import Prefix, decode_prefixes, encode_prefixes

    prefixes = [Prefix(AFI.IPV4, a, 32) for a in addresses]
    if other is not None:
        at, length = other
        length &= ~7
        address = 0xC6336400 & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        prefixes.insert(min(at, len(prefixes)), Prefix(AFI.IPV4, address, length))
    wire = encode_prefixes(prefixes)
    if cut and prefixes and prefixes[-1].length == 32:  # the last /32 loses `cut` octets
        with _pytest.raises(BGPError):
            decode_prefixes(wire[:-cut], AFI.IPV4)
        return
    decoded = decode_prefixes(wire, AFI.IPV4)
    assert decoded == prefixes
    assert all(type(p) is Prefix and type(p.afi) is AFI for p in decoded)
