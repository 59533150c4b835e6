/// The client side of one gRPC call, as a value: request messages out, the response's headers, messages and
/// status in.
///
/// The HTTP/2 connection opens the stream, holds one machine for it and feeds it every input — the response's
/// header blocks, its message bytes, a reset, the deadline, a cancellation, the caller's messages and end — then
/// carries out the action the machine returns. The machine knows no socket and no nghttp2.
///
/// ```swift
/// var machine = ClientStreamStateMachine(maxReceiveMessageSize: 4 << 20)
/// switch try machine.receiveHeaders(headers, endStream: false) {
/// case .receivedMetadata(let metadata): store(metadata)
/// case .finish(let outcome, let reset): complete(outcome); if reset { resetStream(.cancel) }
/// case .none: break
/// }
/// ```
package struct ClientStreamStateMachine: Sendable {
    /// Where the call is.
    package enum State: Hashable, Sendable {
        /// The request is open or ended; the server has sent nothing. Allows: request messages and end (until the
        /// request ended), the response header block (→ `receivingResponse`, or `closed` if trailers-only), reset,
        /// deadline, cancel (→ `closed`).
        case awaitingResponseHeaders(requestEnded: Bool)
        /// The response headers arrived. Allows: message bytes, trailers (→ `closed`), the request's messages and
        /// end, reset, deadline, cancel (→ `closed`).
        case receivingResponse(requestEnded: Bool)
        /// The call has its outcome (a status, a reset, a deadline, a cancellation). Server input is ignored;
        /// request messages are illegal; the rest does nothing.
        case closed
    }

    /// What the connection does after a header block from the server.
    package enum HeadersAction: Sendable {
        /// Response headers: the server's initial metadata.
        case receivedMetadata(Metadata)
        /// The call is over: complete it with `outcome` (`nil` is OK) and the trailing metadata; `reset`: the
        /// response was not gRPC or used an encoding never offered, so RST_STREAM(CANCEL) it.
        case finish(outcome: RPCError?, trailingMetadata: Metadata, reset: Bool)
        /// Nothing to do (input after the call ended).
        case none
    }

    /// What the connection does after response bytes, a reset, the deadline or a cancellation.
    package enum EndAction: Sendable, Equatable {
        /// Nothing more to do (messages, if any, were delivered).
        case none
        /// Complete the call with this error; `reset`: RST_STREAM(CANCEL) the stream too (the server may still be
        /// sending).
        case finish(RPCError, reset: Bool)
    }

    package private(set) var state = State.awaitingResponseHeaders(requestEnded: false)
    /// How the server encodes responses (from its `grpc-encoding`).
    package private(set) var responseEncoding = MessageEncoding.identity
    /// The server refused the stream unprocessed (REFUSED_STREAM): safe to retry on another connection.
    package private(set) var refusedUnprocessed = false
    private var deframer: GRPCMessageDeframer
    private let maxReceiveMessageSize: Int

    /// - Parameter maxReceiveMessageSize: the largest response message accepted (RESOURCE_EXHAUSTED above it).
    package init(maxReceiveMessageSize: Int) {
        self.maxReceiveMessageSize = maxReceiveMessageSize
        self.deframer = GRPCMessageDeframer(maxMessageSize: maxReceiveMessageSize)
    }

    private var stateName: String {
        switch state {
        case .awaitingResponseHeaders: "awaiting response headers"
        case .receivingResponse: "receiving the response"
        case .closed: "closed"
        }
    }

    // MARK: Inputs from the caller

    /// The caller sends a request message.
    ///
    /// - Throws: ``StreamStateError`` after the request ended or the call closed (the caller sees CANCELLED).
    package mutating func sendMessage() throws(StreamStateError) {
        switch state {
        case .awaitingResponseHeaders(false), .receivingResponse(false): return
        case .awaitingResponseHeaders(true), .receivingResponse(true):
            throw StreamStateError(input: "a request message", state: "half-closed by the client")
        case .closed:
            throw StreamStateError(input: "a request message", state: "closed")
        }
    }

    /// The caller ends the request.
    ///
    /// - Returns: whether END_STREAM must be sent (`false` when the request already ended or the call is over).
    package mutating func endRequest() -> Bool {
        switch state {
        case .awaitingResponseHeaders(false):
            state = .awaitingResponseHeaders(requestEnded: true)
            return true
        case .receivingResponse(false):
            state = .receivingResponse(requestEnded: true)
            return true
        case .awaitingResponseHeaders(true), .receivingResponse(true), .closed:
            return false
        }
    }

    /// The caller gives up on the call.
    package mutating func cancel() -> EndAction {
        abandon(RPCError(code: .cancelled, message: "the call was cancelled"))
    }

    /// The call's deadline passed.
    package mutating func deadlineExpired(after timeout: Duration) -> EndAction {
        abandon(RPCError(code: .deadlineExceeded, message: "deadline exceeded after \(timeout)"))
    }

    private mutating func abandon(_ error: RPCError) -> EndAction {
        guard state != .closed else { return .none }
        state = .closed
        return .finish(error, reset: true)
    }

    // MARK: Inputs from the server

    /// A complete header block arrived: the response's headers (or trailers-only), or its trailers.
    ///
    /// - Throws: ``StreamStateError`` for trailers without END_STREAM.
    package mutating func receiveHeaders(
        _ headers: [HeaderField], endStream: Bool
    ) throws(StreamStateError) -> HeadersAction {
        switch state {
        case .awaitingResponseHeaders(let requestEnded):
            return receiveResponseHeaders(headers, endStream: endStream, requestEnded: requestEnded)
        case .receivingResponse:
            guard endStream else { throw StreamStateError(input: "trailers without END_STREAM", state: stateName) }
            return finishWithStatus(from: headers)
        case .closed:
            return .none
        }
    }

    private mutating func receiveResponseHeaders(
        _ headers: [HeaderField], endStream: Bool, requestEnded: Bool
    ) -> HeadersAction {
        var httpStatus = 0
        var contentType: String?
        var grpcStatus: String?
        var encoding: String?
        for (name, value) in headers {
            switch name {
            case ":status": httpStatus = Int(value) ?? 0
            case "content-type": contentType = value
            case "grpc-status": grpcStatus = value
            case "grpc-encoding": encoding = value
            default: break
            }
        }
        if httpStatus != 200 {
            let error = RPCError(
                code: Self.code(forHTTPStatus: httpStatus),
                message: "HTTP status \(httpStatus) from a peer that is not speaking gRPC")
            return fail(error)
        }
        guard let contentType, contentType.hasPrefix("application/grpc") else {
            return fail(RPCError(code: .unknown, message: "response content-type '\(contentType ?? "")' is not gRPC"))
        }
        if let encoding {
            switch MessageEncoding(header: encoding) {
            case .gzip?:
                deframer = GRPCMessageDeframer(maxMessageSize: maxReceiveMessageSize, acceptsCompressed: true)
                responseEncoding = .gzip
            case .identity?:
                break
            case nil:
                return fail(
                    RPCError(
                        code: .internal,
                        message: "the server used message encoding '\(encoding)', which was not offered"))
            }
        }
        if endStream || grpcStatus != nil { return finishWithStatus(from: headers) }  // trailers-only
        state = .receivingResponse(requestEnded: requestEnded)
        var metadata = Metadata()
        for (name, value) in headers where !Metadata.isReserved(name) {
            metadata.addWireHeader(name: name, value: value)
        }
        return .receivedMetadata(metadata)
    }

    private mutating func fail(_ error: RPCError) -> HeadersAction {
        state = .closed
        return .finish(outcome: error, trailingMetadata: Metadata(), reset: true)
    }

    private mutating func finishWithStatus(from headers: [HeaderField]) -> HeadersAction {
        state = .closed
        var status: Int?
        var message = ""
        var metadata = Metadata()
        for (name, value) in headers {
            switch name {
            case "grpc-status": status = Int(value)
            case "grpc-message": message = PercentEncoding.decode(value)
            default:
                if !Metadata.isReserved(name) { metadata.addWireHeader(name: name, value: value) }
            }
        }
        guard let status else {
            return .finish(
                outcome: RPCError(code: .internal, message: "the server ended the call without a grpc-status"),
                trailingMetadata: metadata, reset: false)
        }
        guard status == 0 else {
            let error = RPCError(
                code: RPCError.Code(rawValue: status) ?? .unknown, message: message, metadata: metadata)
            return .finish(outcome: error, trailingMetadata: metadata, reset: false)
        }
        do {
            try deframer.finish()
            return .finish(outcome: nil, trailingMetadata: metadata, reset: false)
        } catch {
            return .finish(outcome: error, trailingMetadata: metadata, reset: false)
        }
    }

    /// DATA arrived: whole messages go to `deliver` (still compressed if their flag says so), in order.
    ///
    /// `deliver` may throw (a message that fails to decompress); the call then ends with that error.
    /// - Throws: ``StreamStateError`` for DATA before the response headers.
    package mutating func receiveMessageBytes(
        _ bytes: UnsafeRawBufferPointer,
        deliver: (GRPCMessageDeframer.Message) throws(RPCError) -> Void
    ) throws(StreamStateError) -> EndAction {
        switch state {
        case .awaitingResponseHeaders:
            throw StreamStateError(input: "message bytes", state: stateName)
        case .receivingResponse:
            do {
                try deframer.append(bytes, deliveringTo: deliver)
            } catch {
                return abandon(error)
            }
            return .none
        case .closed:
            return .none
        }
    }

    /// The stream closed (RST_STREAM from the server, or a close before any status).
    package mutating func streamClosed(errorCode: HTTP2ErrorCode) -> EndAction {
        guard state != .closed else { return .none }
        state = .closed
        if errorCode == .refusedStream { refusedUnprocessed = true }
        let error: RPCError =
            switch errorCode {
            case .refusedStream: RPCError(code: .unavailable, message: "the server refused the stream")
            case .cancel: RPCError(code: .cancelled, message: "the server cancelled the call")
            case .noError: RPCError(code: .internal, message: "the stream ended without a status")
            case .internalError: RPCError(code: .unavailable, message: "the connection closed")
            default: RPCError(code: .internal, message: "the stream was reset with \(errorCode)")
            }
        return .finish(error, reset: false)
    }

    /// The connection closed under the call.
    package mutating func connectionClosed(_ error: RPCError) -> EndAction {
        guard state != .closed else { return .none }
        state = .closed
        return .finish(error, reset: false)
    }

    /// HTTP status → gRPC code, for responses from peers that are not gRPC servers (gRPC's http-grpc-status-mapping).
    package static func code(forHTTPStatus status: Int) -> RPCError.Code {
        switch status {
        case 400: .internal
        case 401: .unauthenticated
        case 403: .permissionDenied
        case 404: .unimplemented
        case 429, 502, 503, 504: .unavailable
        default: .unknown
        }
    }
}
