/// The server side of one gRPC call, as a value: request headers in, messages in, a response out, one status.
///
/// The HTTP/2 connection holds one per stream and feeds it every input — the request's header block, its message
/// bytes, its end, the handler's responses and status, a deadline, a reset — then carries out the action the
/// machine returns. The machine knows no socket, no nghttp2 and no method table: routing is the caller's, who
/// reports an unknown method with ``sendStatus(_:trailingMetadata:responseMetadata:)``.
///
/// ```swift
/// var machine = ServerStreamStateMachine(maxReceiveMessageSize: 4 << 20, responseCompression: .identity)
/// switch try machine.receiveHeaders(headers, endStream: false) {
/// case .start(let head): startHandler(for: head.path)
/// case .respond(let response, let reset): send(response); if reset { resetStream(.noError) }
/// case .fail(let failure): send(failure.status); if failure.resetAfter { resetStream(.noError) }
/// case .none: break
/// }
/// ```
package struct ServerStreamStateMachine: Sendable {
    /// Where the call is.
    package enum State: Hashable, Sendable {
        /// The client opened the stream; its request header block has not arrived. Allows: request headers, reset.
        case awaitingRequestHeaders
        /// The handler runs. Allows: message bytes and the request's end while the request is open, response
        /// messages, the status (→ `closed`), the deadline (→ `closed`), reset (→ `closed`).
        /// - requestEnded: the client ended its side (END_STREAM); more bytes or headers from it are illegal.
        /// - responseHeadersSent: the response header block is out, so the status goes as trailers.
        case open(requestEnded: Bool, responseHeadersSent: Bool)
        /// The status is sent or the stream was reset: the call is over. Inputs from the client are ignored (it may
        /// still be sending); a response message is illegal; a second status or a deadline does nothing.
        case closed
    }

    /// A gRPC request's head, once its header block is accepted.
    package struct RequestHead: Sendable {
        /// `:path`: `/package.Service/Method`.
        package var path: String
        /// The custom metadata the client sent (reserved headers removed).
        package var metadata: Metadata
        /// The client's `grpc-timeout`, if it sent one.
        package var timeout: Duration?
    }

    /// What the connection does after a header block.
    package enum HeadersAction: Sendable {
        /// A gRPC request: route `head.path` and start its handler (or report an unknown method as a status).
        case start(RequestHead)
        /// Not a gRPC request: send this complete HTTP response; `resetAfter`: the client may still be sending, so
        /// end its side with RST_STREAM(NO_ERROR) once the response is out (RFC 9113 §8.1).
        case respond(PlainHTTPResponse, resetAfter: Bool)
        /// The call ends here: a gRPC request this server cannot take, or request trailers that end it badly.
        case fail(Failure)
        /// Nothing to do (the request's trailers, or input after the call ended).
        case none
    }

    /// What the connection does after request bytes or the request's end.
    package enum InboundAction: Sendable {
        /// Nothing more to do (messages, if any, were delivered).
        case none
        /// The request broke a rule (a malformed or oversized message, an end inside a message).
        case fail(Failure)
    }

    /// A call the server ends: send `status`; then, if the client may still be sending, RST_STREAM(NO_ERROR)
    /// (RFC 9113 §8.1); a handler already running is cancelled and its reads fail with `error`.
    package struct Failure: Sendable {
        package var status: StatusAction
        package var resetAfter: Bool
        package var error: RPCError

        package init(status: StatusAction, resetAfter: Bool, error: RPCError) {
            self.status = status
            self.resetAfter = resetAfter
            self.error = error
        }
    }

    /// What the connection does to send a response message.
    package enum ResponseAction: Sendable, Hashable {
        /// Send the response header block first (``responseHeaders(metadata:)``), then the message.
        case sendHeadersThenMessage
        /// Send the message.
        case sendMessage
    }

    /// How the connection ends the call.
    package enum StatusAction: Sendable {
        /// Send the status as a header block that also opens the response (no message was sent).
        case sendTrailersOnly([HeaderField])
        /// Send the status as trailers after the queued messages.
        case sendTrailers([HeaderField])
        /// The call is already over; nothing to send.
        case none
    }

    package private(set) var state = State.awaitingRequestHeaders
    /// How responses are encoded: gzip when this server compresses and the client accepts it.
    package private(set) var responseEncoding = MessageEncoding.identity
    private var deframer: GRPCMessageDeframer
    private let maxReceiveMessageSize: Int
    private let responseCompression: MessageEncoding

    /// - Parameters:
    ///   - maxReceiveMessageSize: the largest request message accepted (RESOURCE_EXHAUSTED above it).
    ///   - responseCompression: the encoding responses use when the client accepts it.
    package init(maxReceiveMessageSize: Int, responseCompression: MessageEncoding) {
        self.maxReceiveMessageSize = maxReceiveMessageSize
        self.responseCompression = responseCompression
        self.deframer = GRPCMessageDeframer(maxMessageSize: maxReceiveMessageSize)
    }

    /// The text a client that does not speak gRPC gets, so curl and HTTP/2 conformance tools see why.
    package static let notGRPCBody = "This is a gRPC server: send POST requests with content-type application/grpc.\n"

    // MARK: Inputs from the client

    /// A complete header block arrived: the request's headers, or its trailers.
    ///
    /// - Throws: ``StreamStateError`` for a header block after the request ended, or request trailers without
    ///   END_STREAM.
    package mutating func receiveHeaders(
        _ headers: [HeaderField], endStream: Bool
    ) throws(StreamStateError) -> HeadersAction {
        switch state {
        case .awaitingRequestHeaders:
            return acceptRequestHeaders(headers, endStream: endStream)
        case .open(let requestEnded, let responseHeadersSent):
            guard !requestEnded else {
                throw StreamStateError(input: "a header block", state: "half-closed by the client")
            }
            guard endStream else { throw StreamStateError(input: "trailers without END_STREAM", state: "open") }
            state = .open(requestEnded: true, responseHeadersSent: responseHeadersSent)
            // Request trailers carry nothing gRPC uses; they end the request like an END_STREAM on DATA.
            if case .fail(let failure) = finishRequest() { return .fail(failure) }
            return .none
        case .closed:
            return .none
        }
    }

    private mutating func acceptRequestHeaders(_ headers: [HeaderField], endStream: Bool) -> HeadersAction {
        var method = ""
        var path = ""
        var contentType = ""
        var timeout: String?
        var encoding: String?
        var acceptEncoding = ""
        var metadata = Metadata()
        for (name, value) in headers {
            switch name {
            case ":method": method = value
            case ":path": path = value
            case "content-type": contentType = value
            case "grpc-timeout": timeout = value
            case "grpc-encoding": encoding = value
            case "grpc-accept-encoding": acceptEncoding = value
            default:
                if !Metadata.isReserved(name) { metadata.addWireHeader(name: name, value: value) }
            }
        }
        guard method == "POST" else {
            state = .closed
            let response = PlainHTTPResponse(status: 405, headers: ["allow": "POST"], body: Self.notGRPCBody)
            return .respond(response, resetAfter: !endStream)
        }
        guard contentType.hasPrefix("application/grpc") else {
            state = .closed
            return .respond(PlainHTTPResponse(status: 415, body: Self.notGRPCBody), resetAfter: !endStream)
        }
        if let encoding {
            switch MessageEncoding(header: encoding) {
            case nil:
                return refuse(
                    RPCError(code: .unimplemented, message: "message encoding '\(encoding)' is not supported"),
                    endStream: endStream)
            case .gzip?:
                deframer = GRPCMessageDeframer(maxMessageSize: maxReceiveMessageSize, acceptsCompressed: true)
            case .identity?:
                break
            }
        }
        if responseCompression == .gzip,
            acceptEncoding.split(separator: ",").contains(where: { MessageEncoding(header: String($0)) == .gzip })
        {
            responseEncoding = .gzip
        }
        var duration: Duration?
        if let timeout {
            guard let nanoseconds = GRPCTimeout.decode(timeout) else {
                return refuse(
                    RPCError(code: .internal, message: "malformed grpc-timeout '\(timeout)'"), endStream: endStream)
            }
            duration = .nanoseconds(nanoseconds)
        }
        state = .open(requestEnded: endStream, responseHeadersSent: false)
        return .start(RequestHead(path: path, metadata: metadata, timeout: duration))
    }

    private mutating func refuse(_ error: RPCError, endStream: Bool) -> HeadersAction {
        state = .closed
        let status = StatusAction.sendTrailersOnly(
            Self.statusFields(
                error, trailingMetadata: Metadata(), responseMetadata: Metadata(), opensResponse: true,
                encoding: .identity))
        return .fail(Failure(status: status, resetAfter: !endStream, error: error))
    }

    /// DATA arrived: whole messages go to `deliver` (still compressed if their flag says so), in order.
    ///
    /// `deliver` may throw (a message that fails to decompress); the call then fails with that error.
    /// - Throws: ``StreamStateError`` for bytes before the request headers or after the request ended.
    package mutating func receiveMessageBytes(
        _ bytes: UnsafeRawBufferPointer,
        deliver: (GRPCMessageDeframer.Message) throws(RPCError) -> Void
    ) throws(StreamStateError) -> InboundAction {
        switch state {
        case .awaitingRequestHeaders:
            throw StreamStateError(input: "message bytes", state: "awaiting request headers")
        case .open(let requestEnded, _):
            guard !requestEnded else {
                throw StreamStateError(input: "message bytes", state: "half-closed by the client")
            }
            do {
                try deframer.append(bytes, deliveringTo: deliver)
            } catch {
                return failCall(error)
            }
            return .none
        case .closed:
            return .none  // the client may keep sending after the status; its bytes are dropped
        }
    }

    /// The client ended its side (END_STREAM on DATA).
    ///
    /// - Throws: ``StreamStateError`` before the request headers or when the request already ended.
    package mutating func receiveEndOfStream() throws(StreamStateError) -> InboundAction {
        switch state {
        case .awaitingRequestHeaders:
            throw StreamStateError(input: "END_STREAM", state: "awaiting request headers")
        case .open(let requestEnded, let responseHeadersSent):
            guard !requestEnded else { throw StreamStateError(input: "END_STREAM", state: "half-closed by the client") }
            state = .open(requestEnded: true, responseHeadersSent: responseHeadersSent)
            return finishRequest()
        case .closed:
            return .none
        }
    }

    private mutating func finishRequest() -> InboundAction {
        do {
            try deframer.finish()
            return .none
        } catch {
            return failCall(error)
        }
    }

    private mutating func failCall(_ error: RPCError) -> InboundAction {
        guard case .open(let requestEnded, _) = state else { return .none }
        let status = sendStatus(error, trailingMetadata: Metadata(), responseMetadata: Metadata())
        return .fail(Failure(status: status, resetAfter: !requestEnded, error: error))
    }

    /// The stream is gone (RST_STREAM either way, or the connection closed).
    ///
    /// - Returns: whether a running handler must be cancelled (the call had not ended).
    package mutating func streamClosed() -> Bool {
        let wasOpen = if case .open = state { true } else { false }
        state = .closed
        return wasOpen
    }

    /// The client's deadline passed.
    ///
    /// - Returns: how the call ends (DEADLINE_EXCEEDED, then a reset: the client may still be sending), or `nil`
    ///   once the call is over.
    package mutating func deadlineExpired() -> Failure? {
        let error = RPCError(code: .deadlineExceeded, message: "deadline exceeded")
        let status = sendStatus(error, trailingMetadata: Metadata(), responseMetadata: Metadata())
        if case .none = status { return nil }
        return Failure(status: status, resetAfter: true, error: error)
    }

    // MARK: Inputs from the handler

    /// The handler sends a response message.
    ///
    /// - Throws: ``StreamStateError`` when the call is over (the handler sees CANCELLED) or has not started.
    package mutating func sendMessage() throws(StreamStateError) -> ResponseAction {
        switch state {
        case .awaitingRequestHeaders:
            throw StreamStateError(input: "a response message", state: "awaiting request headers")
        case .open(let requestEnded, let responseHeadersSent):
            if responseHeadersSent { return .sendMessage }
            state = .open(requestEnded: requestEnded, responseHeadersSent: true)
            return .sendHeadersThenMessage
        case .closed:
            throw StreamStateError(input: "a response message", state: "closed")
        }
    }

    /// The call ends with `error`'s status, or OK when `nil`: once; later statuses do nothing.
    ///
    /// - Parameters:
    ///   - trailingMetadata: the handler's trailing metadata (an error's own metadata is added after it).
    ///   - responseMetadata: the handler's initial metadata, sent in the same block when no message went out.
    package mutating func sendStatus(
        _ error: RPCError?, trailingMetadata: Metadata, responseMetadata: Metadata
    ) -> StatusAction {
        switch state {
        case .awaitingRequestHeaders, .open(_, false):
            state = .closed
            return .sendTrailersOnly(
                Self.statusFields(
                    error, trailingMetadata: trailingMetadata, responseMetadata: responseMetadata, opensResponse: true,
                    encoding: responseEncoding))
        case .open(_, true):
            state = .closed
            return .sendTrailers(
                Self.statusFields(
                    error, trailingMetadata: trailingMetadata, responseMetadata: Metadata(), opensResponse: false,
                    encoding: responseEncoding))
        case .closed:
            return .none
        }
    }

    // MARK: Header blocks

    /// The response header block: `:status` 200, gRPC's content-type, the encodings, then `metadata`.
    package func responseHeaders(metadata: Metadata) -> [HeaderField] {
        Self.responseHeaderFields(encoding: responseEncoding, metadata: metadata)
    }

    private static func responseHeaderFields(encoding: MessageEncoding, metadata: Metadata) -> [HeaderField] {
        var headers: [HeaderField] = [
            (":status", "200"), ("content-type", "application/grpc"),
            ("grpc-accept-encoding", MessageEncoding.acceptHeader),
        ]
        if encoding == .gzip { headers.append(("grpc-encoding", "gzip")) }
        metadata.forEachWireHeader { headers.append(($0, $1)) }
        return headers
    }

    /// A status block; `opensResponse` prefixes the response headers (trailers-only).
    private static func statusFields(
        _ error: RPCError?, trailingMetadata: Metadata, responseMetadata: Metadata, opensResponse: Bool,
        encoding: MessageEncoding
    ) -> [HeaderField] {
        var fields: [HeaderField] =
            opensResponse ? responseHeaderFields(encoding: encoding, metadata: responseMetadata) : []
        fields.append(("grpc-status", String(error?.code.rawValue ?? 0)))
        if let error, !error.message.isEmpty { fields.append(("grpc-message", PercentEncoding.encode(error.message))) }
        var trailing = trailingMetadata
        if let error { for entry in error.metadata { trailing.append(entry) } }
        trailing.forEachWireHeader { fields.append(($0, $1)) }
        return fields
    }
}

extension Metadata {
    /// Appends an entry as it is, string or binary.
    package mutating func append(_ entry: Entry) {
        switch entry.value {
        case .string(let text): add(entry.key, text)
        case .binary(let bytes): add(entry.key, binary: bytes)
        }
    }
}
