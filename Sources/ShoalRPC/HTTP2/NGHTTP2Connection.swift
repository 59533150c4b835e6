internal import CNGHTTP2
internal import NIOCore
internal import RPCCore

/// A header field as it crosses HTTP/2: lowercase name, value.
typealias HTTP2Header = HeaderField

/// HTTP/2 settings and limits for one connection.
public struct HTTP2Configuration: Sendable, Hashable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to the peer.
    public var maxConcurrentStreams: Int = 256
    /// The per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE). A stream whose reader does not consume stops
    /// being sent data once this many bytes are buffered.
    public var streamWindowSize: Int = 256 * 1024
    /// The connection-wide receive window.
    public var connectionWindowSize: Int = 8 * 1024 * 1024
    /// Bytes of received messages a stream buffers for its reader before its window stops being replenished.
    public var streamBufferHighWatermark: Int = 256 * 1024
    /// Bytes of outgoing data a stream buffers before its writer waits.
    public var streamWriteHighWatermark: Int = 256 * 1024
    /// SETTINGS_MAX_FRAME_SIZE: the largest DATA frame the peer may send us.
    public var maxFrameSize: Int = 16 * 1024

    public init() {}
}

/// One HTTP/2 stream on an ``NGHTTP2Connection``: the part common to server calls and client calls.
///
/// Confined to the connection's event loop. Subclasses receive the stream's events.
class HTTP2Stream {
    let id: Int32
    // Strong: a handler task may hold its call after the channel has closed; the connection drops its streams
    // when it closes, which breaks the cycle.
    let connection: NGHTTP2Connection
    /// The header block being received.
    var receivedHeaders: [HTTP2Header] = []
    /// Outgoing DATA bytes not yet taken by nghttp2.
    var outbound: ByteBuffer
    /// No DATA follows `outbound`.
    var outboundEnded = false
    /// Trailers to send after the last DATA, if any.
    var outboundTrailers: [HTTP2Header]?
    /// A data provider has been submitted for this stream.
    var dataSubmitted = false
    /// nghttp2 asked for data when there was none; `resume_data` wakes it.
    var deferred = false
    /// Received DATA bytes not yet returned to the peer's window.
    var unconsumedBytes = 0
    /// Writers waiting for `outbound` to drain below the watermark.
    var writeWaiters: [CheckedContinuation<Void, any Error>] = []
    var closed = false

    init(id: Int32, connection: NGHTTP2Connection) {
        self.id = id
        self.connection = connection
        self.outbound = connection.allocator.buffer(capacity: 0)
    }

    /// A complete header block arrived (HEADERS plus CONTINUATION); `endStream`: it ends the peer's side too.
    func headersReceived(endStream: Bool) {}
    /// A chunk of DATA arrived.
    func dataReceived(_ bytes: UnsafeRawBufferPointer) {}
    /// The peer ended its side of the stream with a DATA frame.
    func endStreamReceived() {}
    /// The stream is closed (by either side); `errorCode` is the HTTP/2 error code, 0 for a clean close.
    func streamClosed(errorCode: UInt32) {}
    /// The connection closed under an open stream.
    func connectionClosed(_ error: RPCError) { streamClosed(errorCode: UInt32(NGHTTP2_INTERNAL_ERROR.rawValue)) }
    /// Whether the stream's reader is behind by more than `limit` bytes; if so, the stream remembers to call
    /// ``NGHTTP2Connection/readerConsumed(_:)`` once it catches up, and the window is not replenished meanwhile.
    func withholdWindowIfBacklogExceeds(_ limit: Int) -> Bool { false }

    /// Queues a framed message; resumes `continuation` now, or once the outgoing buffer has drained below the write
    /// watermark (the peer's flow-control window is what drains it).
    func enqueueOutbound(_ frame: ByteBuffer, resuming continuation: CheckedContinuation<Void, any Error>) {
        var frame = frame
        connection.appendOutbound(self, &frame)
        if outbound.readableBytes >= connection.configuration.streamWriteHighWatermark {
            writeWaiters.append(continuation)
        } else {
            continuation.resume()
        }
    }

    /// Fails every waiting writer, for a stream that will never drain.
    func failWriters(_ error: any Error) {
        let waiters = writeWaiters
        writeWaiters = []
        for waiter in waiters { waiter.resume(throwing: error) }
    }
}

/// What a connection asks of its role (server or client).
protocol NGHTTP2ConnectionDelegate: AnyObject {
    /// The peer opened a stream (server side): return its handler, or `nil` to refuse it.
    func connection(_ connection: NGHTTP2Connection, streamOpened id: Int32) -> HTTP2Stream?
    /// The peer sent GOAWAY.
    func connectionReceivedGoAway(_ connection: NGHTTP2Connection, lastStreamID: Int32)
    /// A stream closed.
    func connection(_ connection: NGHTTP2Connection, streamClosed id: Int32)
    /// The channel closed; every stream is already closed.
    func connectionClosed(_ connection: NGHTTP2Connection)
}

/// Drives one nghttp2 session from a SwiftNIO channel: bytes read from the socket go to `nghttp2_session_mem_recv`,
/// frames nghttp2 wants to send come from `nghttp2_session_mem_send` and are written in one flush per event-loop
/// turn. All state is confined to the channel's event loop.
///
/// Flow control is manual (`no_auto_window_update`): a stream's received bytes are returned to the peer's window
/// only while its reader keeps up, so a slow reader slows its writer instead of growing memory.
///
/// `@unchecked Sendable`: references travel between threads, but every method runs on ``eventLoop``.
final class NGHTTP2Connection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Role { case server, client }

    let role: Role
    let configuration: HTTP2Configuration
    let eventLoop: any EventLoop
    let allocator: ByteBufferAllocator
    weak var delegate: (any NGHTTP2ConnectionDelegate)?
    private(set) var context: ChannelHandlerContext?
    private var session: OpaquePointer?
    private(set) var streams: [Int32: HTTP2Stream] = [:]
    private var flushScheduled = false
    private var inRead = false
    private(set) var isClosed = false
    private(set) var goAwaySent = false
    private(set) var goAwayReceived = false
    /// The clock keepalive decisions read.
    let clock: TimerClock
    /// The last time a frame arrived, for idle and keepalive decisions.
    private(set) var lastActivity: NIODeadline

    init(role: Role, configuration: HTTP2Configuration, channel: any Channel, clock: TimerClock = .system) {
        self.role = role
        self.configuration = configuration
        self.eventLoop = channel.eventLoop
        self.allocator = channel.allocator
        self.clock = clock
        self.lastActivity = clock.now()
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    var activeStreamCount: Int { streams.count }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        createSession()
        if context.channel.isActive { start() }
    }

    func channelActive(context: ChannelHandlerContext) {
        start()
        context.fireChannelActive()
    }

    private var started = false
    private func start() {
        guard !started, session != nil else { return }
        started = true
        submitSettings()
        flush()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closeAllStreams()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        closeAllStreams()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard let session, !isClosed else { return }
        lastActivity = clock.now()
        inRead = true
        let result = buffer.withUnsafeReadableBytes { bytes -> Int in
            guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return 0 }
            return nghttp2_session_mem_recv(session, base, bytes.count)
        }
        inRead = false
        if result < 0 {
            // A protocol error: nghttp2 has queued GOAWAY; send it, then close.
            flush()
            close(
                context: context,
                reason:
                    "HTTP/2 error from the peer: \(String(cString: nghttp2_strerror(Int32(truncatingIfNeeded: result))))"
            )
            return
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { flush() }
        context.fireChannelWritabilityChanged()
    }

    /// Why the connection is closing, if something below HTTP/2 said (a TLS failure, for instance).
    private(set) var closeReason: RPCError?

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closeReason == nil, let error = error as? RPCError { closeReason = error }
        close(context: context, reason: "\(error)")
    }

    /// Closes the channel, remembering why (the first reason wins) for the calls it ends.
    private func close(context: ChannelHandlerContext, reason: String) {
        if closeReason == nil {
            closeReason = RPCError(code: .unavailable, message: "the connection closed: \(reason)")
        }
        guard !isClosed else { return }
        isClosed = true
        context.close(promise: nil)
    }

    private var closeReported = false

    private func closeAllStreams() {
        guard !closeReported else { return }
        closeReported = true
        isClosed = true
        let open = streams
        streams = [:]
        for (_, stream) in open.sorted(by: { $0.key < $1.key }) {
            stream.closed = true
            stream.failWriters(
                closeReason ?? RPCError(code: .unavailable, message: "the connection closed by the peer"))
            stream.connectionClosed(
                closeReason ?? RPCError(code: .unavailable, message: "the connection closed by the peer"))
        }
        delegate?.connectionClosed(self)
    }

    // MARK: Session setup

    private func createSession() {
        var option: OpaquePointer?
        nghttp2_option_new(&option)
        defer { nghttp2_option_del(option) }
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_peer_max_concurrent_streams(option, 100)
        let userData = Unmanaged.passUnretained(self).toOpaque()
        var newSession: OpaquePointer?
        let rv: Int32 =
            switch role {
            case .server: nghttp2_session_server_new2(&newSession, NGHTTP2Callbacks.shared.pointer, userData, option)
            case .client: nghttp2_session_client_new2(&newSession, NGHTTP2Callbacks.shared.pointer, userData, option)
            }
        guard rv == 0, let newSession else { return }
        session = newSession
    }

    private func submitSettings() {
        guard let session else { return }
        var settings = [
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue),
                value: UInt32(clamping: configuration.maxConcurrentStreams)),
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue),
                value: UInt32(clamping: configuration.streamWindowSize)),
            nghttp2_settings_entry(
                settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue),
                value: UInt32(clamping: configuration.maxFrameSize)),
        ]
        if role == .client {
            settings.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0))
        }
        _ = settings.withUnsafeBufferPointer { entries in
            nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), entries.baseAddress, entries.count)
        }
        let window = Int32(clamping: configuration.connectionWindowSize)
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, window)
    }

    // MARK: Output

    /// Writes whatever nghttp2 has to send, in one socket write.
    func flush() {
        flushScheduled = false
        guard let session, let context else { return }
        guard context.channel.isWritable || isClosed else { return }
        var output: ByteBuffer?
        while true {
            var pointer: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(session, &pointer)
            if count < 0 {
                close(
                    context: context,
                    reason: "HTTP/2 error: \(String(cString: nghttp2_strerror(Int32(truncatingIfNeeded: count))))")
                return
            }
            guard count > 0, let pointer else { break }
            let bytes = UnsafeRawBufferPointer(start: pointer, count: count)
            if output == nil { output = allocator.buffer(capacity: max(count, 1024)) }
            output?.writeBytes(bytes)
            // Keep single writes bounded so a big backlog does not become one huge buffer.
            if let pending = output, pending.readableBytes >= 256 * 1024 {
                context.write(wrapOutboundOut(pending), promise: nil)
                output = nil
                if !context.channel.isWritable { break }
            }
        }
        if let output { context.write(wrapOutboundOut(output), promise: nil) }
        context.flush()
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            close(context: context, reason: "the HTTP/2 session is over (GOAWAY, no streams left)")
        }
    }

    /// Flushes at the end of this event-loop turn, coalescing the output of everything that runs in it.
    func scheduleFlush() {
        guard !flushScheduled, !inRead else { return }
        flushScheduled = true
        eventLoop.assumeIsolatedUnsafeUnchecked().execute { [self] in flush() }
    }

    // MARK: Streams

    func register(_ stream: HTTP2Stream) {
        streams[stream.id] = stream
    }

    /// Sends a header block; `endStream` ends our side with it (a trailers-only response, or a bodiless request).
    func submitResponse(_ stream: HTTP2Stream, headers: [HTTP2Header], endStream: Bool) {
        guard let session, !stream.closed else { return }
        withNameValues(headers) { nva, count in
            if endStream {
                _ = nghttp2_submit_response(session, stream.id, nva, count, nil)
            } else {
                var provider = NGHTTP2Callbacks.dataProvider
                _ = nghttp2_submit_response(session, stream.id, nva, count, &provider)
                stream.dataSubmitted = true
            }
        }
        scheduleFlush()
    }

    /// Sends a complete response with a body (for requests that are not gRPC): headers, then `body` as DATA with
    /// END_STREAM.
    func submitResponse(_ stream: HTTP2Stream, headers: [HTTP2Header], body: String) {
        guard !stream.closed else { return }
        submitResponse(stream, headers: headers, endStream: false)
        var bytes = allocator.buffer(string: body)
        appendOutbound(stream, &bytes)
        endOutbound(stream, trailers: nil)
    }

    /// Opens a client stream; returns its id, or `nil` if the session refuses (GOAWAY received, ids exhausted).
    func submitRequest(headers: [HTTP2Header], makeStream: (Int32) -> HTTP2Stream) -> HTTP2Stream? {
        guard let session, !isClosed, !goAwayReceived else { return nil }
        var provider = NGHTTP2Callbacks.dataProvider
        let id = withNameValues(headers) { nva, count in
            nghttp2_submit_request(session, nil, nva, count, &provider, nil)
        }
        guard id > 0 else { return nil }
        let stream = makeStream(id)
        stream.dataSubmitted = true
        streams[id] = stream
        scheduleFlush()
        return stream
    }

    /// Queues DATA (already gRPC-framed) on a stream.
    func appendOutbound(_ stream: HTTP2Stream, _ bytes: inout ByteBuffer) {
        guard !stream.closed, !stream.outboundEnded else { return }
        if stream.outbound.readableBytes == 0 {
            swap(&stream.outbound, &bytes)
        } else {
            stream.outbound.writeBuffer(&bytes)
        }
        resume(stream)
    }

    /// Ends our side of a stream after its queued DATA, with `trailers` if given.
    func endOutbound(_ stream: HTTP2Stream, trailers: [HTTP2Header]?) {
        guard !stream.closed, !stream.outboundEnded else { return }
        stream.outboundEnded = true
        stream.outboundTrailers = trailers
        resume(stream)
    }

    private func resume(_ stream: HTTP2Stream) {
        guard let session, stream.dataSubmitted else { return }
        if stream.deferred {
            stream.deferred = false
            nghttp2_session_resume_data(session, stream.id)
        }
        scheduleFlush()
    }

    /// Resets a stream with an HTTP/2 error code (CANCEL = 8 by default).
    func reset(_ stream: HTTP2Stream, errorCode: UInt32 = UInt32(NGHTTP2_CANCEL.rawValue)) {
        guard let session, !stream.closed else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream.id, errorCode)
        scheduleFlush()
    }

    /// A stream's reader caught up: return the bytes withheld from its window.
    func readerConsumed(_ stream: HTTP2Stream) {
        guard let session, !stream.closed, stream.unconsumedBytes > 0 else { return }
        nghttp2_session_consume(session, stream.id, stream.unconsumedBytes)
        stream.unconsumedBytes = 0
        scheduleFlush()
    }

    /// Graceful shutdown: tell the peer no new streams will be accepted; in-flight ones continue.
    func sendGracefulGoAway() {
        guard let session, !goAwaySent else { return }
        goAwaySent = true
        let lastStreamID = nghttp2_session_get_last_proc_stream_id(session)
        nghttp2_submit_goaway(
            session, UInt8(NGHTTP2_FLAG_NONE.rawValue), lastStreamID, UInt32(NGHTTP2_NO_ERROR.rawValue), nil, 0)
        scheduleFlush()
        closeIfDrained()
    }

    /// PINGs sent and ACKs received, for keepalive.
    private(set) var pingsSent = 0
    private(set) var pingAcksReceived = 0
    private(set) var lastPingSent: NIODeadline?
    var awaitingPingAck: Bool { pingsSent > pingAcksReceived }

    /// Sends a PING; the peer must ACK it.
    func sendPing() {
        guard let session else { return }
        nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
        pingsSent += 1
        lastPingSent = clock.now()
        scheduleFlush()
    }

    /// Closes the channel now (after flushing what is queued).
    func closeNow(reason: String = "closed by this side") {
        guard let context else { return }
        flush()
        close(context: context, reason: reason)
    }

    /// After GOAWAY (either way), the connection closes once its last stream does.
    private func closeIfDrained() {
        guard goAwaySent || goAwayReceived, streams.isEmpty, let context else { return }
        flush()
        close(context: context, reason: "GOAWAY, and the last stream is done")
    }

    // MARK: Callbacks from nghttp2 (inside mem_recv / mem_send)

    /// The highest stream id a client's HEADERS has used, and the odd ids it skipped below it (bounded).
    private var highestPeerStreamID = 0
    private var skippedPeerStreamIDs: [ClosedRange<Int>] = []

    /// RFC 9113 §5.1.1: a client's new stream id must be above every id it used before. nghttp2 only ignores a
    /// HEADERS below the highest id (it cannot tell a stale trailer for a stream it reset from a new stream), so the
    /// server remembers the ids a client skipped — a stream that never existed — and ends the connection with
    /// PROTOCOL_ERROR when one of them is used. A conforming client never skips, so the list stays empty; a hostile
    /// one gets at most 32 ranges remembered, the oldest forgotten first (forgotten ids fall back to nghttp2's ignore).
    fileprivate func onBeginFrame(_ header: nghttp2_frame_hd) -> Int32 {
        guard role == .server, UInt32(header.type) == NGHTTP2_HEADERS.rawValue, header.stream_id > 0,
            header.stream_id % 2 == 1
        else { return 0 }
        let id = Int(header.stream_id)
        if id > highestPeerStreamID {
            let firstSkipped = highestPeerStreamID == 0 ? 1 : highestPeerStreamID + 2
            if id > firstSkipped {
                if skippedPeerStreamIDs.count == 32 { skippedPeerStreamIDs.removeFirst() }
                skippedPeerStreamIDs.append(firstSkipped...(id - 2))
            }
            highestPeerStreamID = id
        } else if let session, skippedPeerStreamIDs.contains(where: { $0.contains(id) && id % 2 == 1 }) {
            nghttp2_session_terminate_session(session, UInt32(NGHTTP2_PROTOCOL_ERROR.rawValue))
        }
        return 0
    }

    fileprivate func onBeginHeaders(streamID: Int32, category: UInt32) -> Int32 {
        if category == NGHTTP2_HCAT_REQUEST.rawValue, role == .server {
            if goAwaySent {
                if let session {
                    nghttp2_submit_rst_stream(
                        session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, UInt32(NGHTTP2_REFUSED_STREAM.rawValue))
                }
                return 0
            }
            guard let stream = delegate?.connection(self, streamOpened: streamID) else { return 0 }
            streams[streamID] = stream
        }
        streams[streamID]?.receivedHeaders.removeAll(keepingCapacity: true)
        return 0
    }

    fileprivate func onHeader(streamID: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 {
        guard let stream = streams[streamID] else { return 0 }
        if stream.receivedHeaders.count >= 256 {
            return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)  // resets the stream
        }
        stream.receivedHeaders.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        return 0
    }

    fileprivate func onFrameReceived(_ frame: UnsafePointer<nghttp2_frame>) -> Int32 {
        let header = frame.pointee.hd
        let endStream = header.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
        switch UInt32(header.type) {
        case NGHTTP2_HEADERS.rawValue:
            if let stream = streams[header.stream_id], !stream.closed {
                stream.headersReceived(endStream: endStream)
            }
        case NGHTTP2_DATA.rawValue:
            if endStream, let stream = streams[header.stream_id], !stream.closed { stream.endStreamReceived() }
        case NGHTTP2_PING.rawValue:
            if header.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0 { pingAcksReceived += 1 }
        case NGHTTP2_GOAWAY.rawValue:
            goAwayReceived = true
            delegate?.connectionReceivedGoAway(self, lastStreamID: frame.pointee.goaway.last_stream_id)
            closeIfDrained()
        default:
            break
        }
        return 0
    }

    fileprivate func onDataChunk(streamID: Int32, data: UnsafeRawBufferPointer) -> Int32 {
        guard let session else { return 0 }
        guard let stream = streams[streamID], !stream.closed else {
            nghttp2_session_consume_connection(session, data.count)
            return 0
        }
        stream.dataReceived(data)
        stream.unconsumedBytes += data.count
        if !stream.closed, !stream.withholdWindowIfBacklogExceeds(configuration.streamBufferHighWatermark) {
            nghttp2_session_consume(session, streamID, stream.unconsumedBytes)
            stream.unconsumedBytes = 0
        }
        return 0
    }

    fileprivate func onStreamClose(streamID: Int32, errorCode: UInt32) -> Int32 {
        guard let stream = streams.removeValue(forKey: streamID) else { return 0 }
        if let session, stream.unconsumedBytes > 0 {
            nghttp2_session_consume_connection(session, stream.unconsumedBytes)
            stream.unconsumedBytes = 0
        }
        stream.closed = true
        stream.failWriters(RPCError(code: .cancelled, message: "stream closed"))
        stream.streamClosed(errorCode: errorCode)
        delegate?.connection(self, streamClosed: streamID)
        if goAwaySent || goAwayReceived, streams.isEmpty { scheduleCloseIfDrained() }
        return 0
    }

    private func scheduleCloseIfDrained() {
        eventLoop.assumeIsolatedUnsafeUnchecked().execute { [self] in closeIfDrained() }
    }

    fileprivate func readOutbound(
        streamID: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>
    ) -> Int {
        guard let stream = streams[streamID] else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        let count = min(length, stream.outbound.readableBytes)
        if count > 0 {
            stream.outbound.withUnsafeReadableBytes { bytes in
                if let base = bytes.baseAddress {
                    buffer.update(from: base.assumingMemoryBound(to: UInt8.self), count: count)
                }
            }
            stream.outbound.moveReaderIndex(forwardBy: count)
        }
        if stream.outbound.readableBytes == 0 {
            stream.outbound.clear()
            if stream.outboundEnded {
                flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
                if let trailers = stream.outboundTrailers, let session {
                    flags.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
                    withNameValues(trailers) { nva, nvCount in
                        _ = nghttp2_submit_trailer(session, streamID, nva, nvCount)
                    }
                }
            } else if count == 0 {
                stream.deferred = true
                return Int(NGHTTP2_ERR_DEFERRED.rawValue)
            }
        }
        if !stream.writeWaiters.isEmpty, stream.outbound.readableBytes < configuration.streamWriteHighWatermark {
            let waiters = stream.writeWaiters
            stream.writeWaiters = []
            for waiter in waiters { waiter.resume() }
        }
        return count
    }
}

/// Calls `body` with `headers` as an `nghttp2_nv` array (nghttp2 copies names and values during the call).
private func withNameValues<R>(_ headers: [HTTP2Header], _ body: (UnsafePointer<nghttp2_nv>?, Int) -> R) -> R {
    var storage: [UInt8] = []
    var spans: [(name: Int, nameCount: Int, value: Int, valueCount: Int)] = []
    spans.reserveCapacity(headers.count)
    for (name, value) in headers {
        let nameStart = storage.count
        storage.append(contentsOf: name.utf8)
        let valueStart = storage.count
        storage.append(contentsOf: value.utf8)
        spans.append((nameStart, valueStart - nameStart, valueStart, storage.count - valueStart))
    }
    storage.append(0)  // never empty, so there is always a base address
    return storage.withUnsafeMutableBufferPointer { bytes in
        guard let base = bytes.baseAddress else { return body(nil, 0) }
        let nameValues = spans.map { span in
            nghttp2_nv(
                name: base + span.name, value: base + span.value, namelen: span.nameCount, valuelen: span.valueCount,
                flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
            )
        }
        return nameValues.withUnsafeBufferPointer { body($0.baseAddress, $0.count) }
    }
}

/// The nghttp2 callback table, shared by every session; each callback finds its connection through `user_data`.
private final class NGHTTP2Callbacks: @unchecked Sendable {
    static let shared = NGHTTP2Callbacks()

    /// A data provider whose read callback pulls from the stream's `outbound` buffer.
    static var dataProvider: nghttp2_data_provider {
        var provider = nghttp2_data_provider()
        provider.read_callback = { _, streamID, buffer, length, flags, _, userData in
            guard let userData, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            return NGHTTP2Callbacks.connection(userData).readOutbound(
                streamID: streamID, into: buffer, length: length, flags: flags)
        }
        return provider
    }

    let pointer: OpaquePointer?

    private init() {
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks) { _, header, userData in
            guard let header, let userData else { return 0 }
            return NGHTTP2Callbacks.connection(userData).onBeginFrame(header.pointee)
        }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            return NGHTTP2Callbacks.connection(userData).onBeginHeaders(
                streamID: frame.pointee.hd.stream_id, category: frame.pointee.headers.cat.rawValue)
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) {
            _, frame, name, nameLength, value, valueLength, _, userData in
            guard let frame, let userData else { return 0 }
            return NGHTTP2Callbacks.connection(userData).onHeader(
                streamID: frame.pointee.hd.stream_id,
                name: UnsafeRawBufferPointer(start: name, count: nameLength),
                value: UnsafeRawBufferPointer(start: value, count: valueLength)
            )
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, userData in
            guard let frame, let userData else { return 0 }
            return NGHTTP2Callbacks.connection(userData).onFrameReceived(frame)
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamID, data, length, userData in
            guard let userData else { return 0 }
            return NGHTTP2Callbacks.connection(userData).onDataChunk(
                streamID: streamID, data: UnsafeRawBufferPointer(start: data, count: length))
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, errorCode, userData in
            guard let userData else { return 0 }
            return NGHTTP2Callbacks.connection(userData).onStreamClose(streamID: streamID, errorCode: errorCode)
        }
        pointer = callbacks
    }

    fileprivate static func connection(_ userData: UnsafeMutableRawPointer) -> NGHTTP2Connection {
        Unmanaged<NGHTTP2Connection>.fromOpaque(userData).takeUnretainedValue()
    }
}
