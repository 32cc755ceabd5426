"""Every private aiortc/aioice name the forwarding core uses: present, with the expected shape, and
doing what the glue relies on, on real peer connections. An aiortc upgrade that moves one of them
must fail here, loudly."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy
from test_sfu_support import ColourTrack, nearest_colour, wait_for

from conference.sfu import aiortc_glue as glue

pytestmark = pytest.mark.media


def test_installed_versions_and_private_names_check_out() -> None:
    glue.check_aiortc()


def test_a_missing_private_method_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    with pytest.raises(glue.GlueError, match=r"RTCRtpSender\._send_keyframe is missing"):
        glue.check_aiortc()


def test_a_changed_signature_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _retransmit(self: Any, sequence_number: int, rtx: bool) -> None:
        return None

    monkeypatch.setattr(RTCRtpSender, "_retransmit", _retransmit)
    with pytest.raises(glue.GlueError, match="_retransmit"):
        glue.check_aiortc()


def test_sync_async_change_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc import RTCRtpReceiver

    def _send_rtcp_pli(self: Any, media_ssrc: int) -> None:
        return None

    monkeypatch.setattr(RTCRtpReceiver, "_send_rtcp_pli", _send_rtcp_pli)
    with pytest.raises(glue.GlueError, match="sync and async"):
        glue.check_aiortc()


def test_a_version_change_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(glue.PINNED, "aiortc", "0.0.1")
    with pytest.raises(glue.GlueError, match=r"aiortc is 1\.16\.0, expected 0\.0\.1"):
        glue.check_aiortc()


async def test_instance_attributes_exist_and_a_renamed_one_fails() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="sendonly")
        glue.check_instances(pc)
        sender = pc.getTransceivers()[0].sender
        del sender._RTCRtpSender__packet_count  # type: ignore[attr-defined]
        with pytest.raises(glue.GlueError, match="__packet_count"):
            glue.check_instances(pc)
    finally:
        await pc.close()


class Pair:
    """A publisher (aiortc, encodes a red camera) and a 'server' whose receive path is the glue's."""

    def __init__(self, from_sockets: bool = False) -> None:
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.publisher = RTCPeerConnection(config)
        self.server = RTCPeerConnection(config)
        self.packets: list[bytes] = []  # RTP that reached the DTLS transport's hook
        self.socket_packets: list[bytes] = []  # RTP taken straight from the sockets
        self.from_sockets = from_sockets
        self.socket_hook: glue.SrtpDatagramHook | None = None
        self.track = ColourTrack((230, 30, 30))

    async def connect(self, **restrict: Any) -> None:
        server = self.server
        self.inbound = server.addTransceiver("video", direction="recvonly")
        self.outbound = server.addTransceiver("video", direction="sendonly")
        self.counter = glue.neutralise_decoder(self.inbound.receiver)
        self.dtls = glue.leg_transport(server)
        glue.narrow_send_window(self.dtls)  # as the server's Session does
        self.output = glue.LegOutput(self.dtls)

        async def on_rtp(data: bytes, arrival_time_ms: int) -> None:
            self.packets.append(data)

        glue.hook_incoming_rtp(self.dtls, on_rtp)
        glue.restrict_host_candidates(server, **restrict)
        await server.setLocalDescription(await server.createOffer())
        if self.from_sockets:
            self.socket_hook = glue.hook_srtp_datagrams(self.dtls, self.socket_packets.append)
        self.offer_sdp = server.localDescription.sdp
        await self.publisher.setRemoteDescription(RTCSessionDescription(self.offer_sdp, "offer"))
        publish, echo = self.publisher.getTransceivers()
        publish.sender.replaceTrack(self.track)
        publish.direction = "sendonly"
        self.echo_receiver = echo.receiver
        self.publish_sender = publish.sender
        await self.publisher.setLocalDescription(await self.publisher.createAnswer())
        await server.setRemoteDescription(self.publisher.localDescription)

    async def close(self) -> None:
        await self.publisher.close()
        await self.server.close()


async def test_raw_packets_arrive_undecoded_and_leave_through_the_leg() -> None:
    pair = Pair()
    try:
        await pair.connect()
        await wait_for(lambda: len(pair.packets) >= 10, 10, "raw RTP at the hook")
        # The hook saw them, aiortc's receiver never did: no decoder thread, nothing decoded.
        assert not glue.decoder_running(pair.inbound.receiver)
        assert pair.counter.frames == 0
        assert glue.negotiated_codecs(pair.inbound)[0].mimeType == "video/VP8"
        uris = {e.uri for e in glue.negotiated_extensions(pair.inbound)}
        assert "urn:ietf:params:rtp-hdrext:sdes:mid" in uris

        # Echo the publisher's own packets back on the server's sendonly slot, with that slot's SSRC:
        # the publisher decodes its red camera from what LegOutput protected and sent.
        ssrc = pair.outbound.sender._ssrc
        received: list[int] = []

        async def read() -> None:
            while True:
                frame = await pair.echo_receiver.track.recv()
                rgb = frame.to_ndarray(format="rgb24")
                received.append(nearest_colour(tuple(rgb.reshape(-1, 3).mean(axis=0))))

        reader = asyncio.create_task(read())
        start = len(pair.packets)
        sent = 0
        deadline = time.monotonic() + 10
        pair.publish_sender._send_keyframe()  # type: ignore[attr-defined]
        while not received and time.monotonic() < deadline:
            for data in pair.packets[start:]:
                packet = bytearray(data)
                struct.pack_into("!I", packet, 8, ssrc)
                sent += pair.output.send(bytes(packet))
            start = len(pair.packets)
            await asyncio.sleep(0.02)
        reader.cancel()
        assert received and received[0] == 0, "the echoed stream must decode as the red camera"
        assert pair.output.packets == sent > 0
    finally:
        await pair.close()


async def test_srtp_is_taken_from_the_sockets_and_bad_datagrams_change_nothing() -> None:
    pair = Pair(from_sockets=True)
    try:
        await pair.connect()
        hook = pair.socket_hook
        assert hook is not None and hook.protocols >= 1
        await wait_for(lambda: len(pair.socket_packets) >= 10, 10, "RTP taken from the sockets")
        # Every RTP packet took the short way: aiortc's DTLS transport saw none, nothing decoded.
        assert pair.packets == []
        assert pair.counter.frames == 0
        ssrcs = {struct.unpack_from("!I", p, 8)[0] for p in pair.socket_packets}
        assert len(ssrcs) == 1 and all(p[0] >> 6 == 2 for p in pair.socket_packets)
        assert hook.packets == len(pair.socket_packets)

        # Garbage shaped like SRTP at the server's socket: counted, dropped, the stream goes on.
        protocol = pair.dtls.transport._connection._protocols[0]
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(5):
                sock.sendto(b"\x80\x60" + bytes(range(60)), (host, port))
        await wait_for(lambda: hook.unprotect_errors >= 5, 5, "bad datagrams counted")
        before = len(pair.socket_packets)
        await wait_for(lambda: len(pair.socket_packets) >= before + 10, 10, "the stream after the garbage")
        assert hook.handler_errors == 0
    finally:
        await pair.close()


@pytest.mark.parametrize("from_sockets", [False, True], ids=["aiortc-path", "socket-hook"])
async def test_rtcp_reaches_the_intercepted_sender_and_pli_goes_upstream(from_sockets: bool) -> None:
    pair = Pair(from_sockets)
    try:
        await pair.connect()
        keyframe_requests: list[float] = []
        nacks: list[int] = []
        glue.intercept_sender(pair.outbound.sender, lambda: keyframe_requests.append(1.0), nacks.append)
        received = pair.socket_packets if from_sockets else pair.packets
        await wait_for(lambda: len(received) >= 5, 10, "raw RTP at the hook")

        # The subscriber (here the publisher's echo receiver) asks for a keyframe and resends.
        ssrc = pair.outbound.sender._ssrc
        await pair.echo_receiver._send_rtcp_pli(ssrc)
        await pair.echo_receiver._send_rtcp_nack(ssrc, [1234, 1236])
        await wait_for(lambda: keyframe_requests and len(nacks) == 2, 5, "PLI and NACK at the sender")
        assert nacks == [1234, 1236]

        # The server asks the publisher for a keyframe through the glue.
        upstream: list[float] = []
        original = pair.publish_sender._send_keyframe

        def record() -> None:
            upstream.append(1.0)
            original()

        pair.publish_sender._send_keyframe = record  # type: ignore[method-assign]
        media_ssrc = struct.unpack_from("!I", received[-1], 8)[0]
        await glue.send_pli(pair.inbound.receiver, media_ssrc)
        await wait_for(lambda: bool(upstream), 5, "PLI at the publisher")
    finally:
        await pair.close()


async def test_sender_reports_carry_the_forwarders_counters() -> None:
    pair = Pair()
    try:
        await pair.connect()
        await wait_for(lambda: len(pair.packets) >= 5, 10, "raw RTP at the hook")
        sender = pair.outbound.sender
        now = time.time()
        glue.update_sender_counters(sender, 4321, 987_654, 123_456_789, now)
        assert glue.sender_counters(sender) == (4321, 987_654, 123_456_789, glue.ntp_time(now))

        async def remote_outbound() -> dict[str, Any] | None:
            stats = await pair.echo_receiver.getStats()
            for item in stats.values():
                if item.type == "remote-outbound-rtp":
                    return {"packets": item.packetsSent, "bytes": item.bytesSent}
            return None

        # A sender report that left before the update carries the old counters: wait for the next
        # ones (aiortc sends one about every second), bounded.
        expected = {"packets": 4321, "bytes": 987_654}
        seen: dict[str, Any] | None = None
        deadline = time.monotonic() + 8
        while seen != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            seen = await remote_outbound()
        assert seen == expected
    finally:
        await pair.close()


async def test_host_candidates_in_a_pinned_port_range_still_connect() -> None:
    pair = Pair()
    try:
        await pair.connect(port_min=47100, port_max=47120)
        ports = [
            int(line.split()[5]) for line in pair.offer_sdp.splitlines() if line.startswith("a=candidate:")
        ]
        assert ports and all(47100 <= port <= 47120 for port in ports)
        await wait_for(lambda: len(pair.packets) >= 5, 10, "media over the pinned port")
    finally:
        await pair.close()


async def test_interface_selection_and_announced_address() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        pc.addTransceiver("video", direction="recvonly")
        glue.restrict_host_candidates(pc, interfaces=["0.0.0.0/0"], announced_address="203.0.113.7")
        await pc.setLocalDescription(await pc.createOffer())
        hosts = [
            line.split()[4]
            for line in pc.localDescription.sdp.splitlines()
            if line.startswith("a=candidate:")
        ]
        # IPv4 interfaces only, each announced as the public address.
        assert hosts and set(hosts) == {"203.0.113.7"}
    finally:
        await pc.close()


async def test_a_bad_port_range_is_refused() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        with pytest.raises(ValueError, match="bad RTC port range"):
            glue.restrict_host_candidates(pc, port_min=5000, port_max=4000)
    finally:
        await pc.close()


async def test_udp_sockets_drain_everything_queued_per_wakeup() -> None:
    import socket

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        assert glue.drain_udp_reads(pc) >= 1
        connection = pc.getTransceivers()[0].receiver.transport.transport._connection
        protocol = next(p for p in connection._protocols if ":" not in p.local_candidate.host)
        received: list[bytes] = []
        protocol.datagram_received = lambda data, addr: received.append(data)  # type: ignore[method-assign]
        address = protocol.transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(100):
                sender.sendto(b"\x80" + bytes([i]) * 20, address)
        # 100 datagrams queued while the loop was busy: read in two wakeups, not a hundred.
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(received) == 100
    finally:
        await pc.close()


async def test_lenient_consent_survives_late_answers_and_expires_without_any(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load endpoint's consent (glue.lenient_consent): checks answered 1 s late keep the
    connection (aioice's own checks, which want an answer within 0.5 s, would hang up after six),
    and with no answers at all it closes once CONSENT_EXPIRY_S has passed."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(glue, "CONSENT_EXPIRY_S", 2.0)
    pair = Pair()
    try:
        glue.lenient_consent(pair.publisher)
        await pair.connect()
        await wait_for(lambda: pair.publisher.iceConnectionState == "completed", 10, "ICE")
        connection = pair.publisher.getTransceivers()[0].receiver.transport.transport._connection
        assert getattr(connection._query_consent_task, "lenient", False)
        # The server's side answers every STUN request 1 s late, then not at all.
        server_ice = glue.leg_transport(pair.server).transport._connection
        mode = {"answer": "late"}
        loop = asyncio.get_running_loop()
        for protocol in server_ice._protocols:
            original = protocol.datagram_received

            def delayed(data: bytes, addr: Any, original: Any = original) -> None:
                if data[:1] in (b"\x00", b"\x01"):  # STUN
                    if mode["answer"] == "late":
                        loop.call_later(1.0, original, data, addr)
                    return
                original(data, addr)

            protocol.datagram_received = delayed
        await asyncio.sleep(6.0)  # aioice's checks: six misses of 0.2 s + 0.5 s each close by 4.2 s
        assert pair.publisher.iceConnectionState == "completed"
        mode["answer"] = "none"
        await wait_for(lambda: pair.publisher.connectionState in ("failed", "closed"), 8, "consent expiry")
    finally:
        await pair.close()
