/// A header field as it crosses HTTP/2: lowercase name, value.
package typealias HeaderField = (name: String, value: String)

/// HTTP/2 error codes (RFC 9113 §7) as RST_STREAM and GOAWAY carry them.
package struct HTTP2ErrorCode: Hashable, Sendable, CustomStringConvertible {
    package let rawValue: UInt32

    package init(rawValue: UInt32) { self.rawValue = rawValue }

    package static let noError = HTTP2ErrorCode(rawValue: 0x0)
    package static let protocolError = HTTP2ErrorCode(rawValue: 0x1)
    package static let internalError = HTTP2ErrorCode(rawValue: 0x2)
    package static let flowControlError = HTTP2ErrorCode(rawValue: 0x3)
    package static let refusedStream = HTTP2ErrorCode(rawValue: 0x7)
    package static let cancel = HTTP2ErrorCode(rawValue: 0x8)
    package static let enhanceYourCalm = HTTP2ErrorCode(rawValue: 0xb)

    package var description: String {
        switch self {
        case .noError: "NO_ERROR"
        case .protocolError: "PROTOCOL_ERROR"
        case .internalError: "INTERNAL_ERROR"
        case .flowControlError: "FLOW_CONTROL_ERROR"
        case .refusedStream: "REFUSED_STREAM"
        case .cancel: "CANCEL"
        case .enhanceYourCalm: "ENHANCE_YOUR_CALM"
        default: "HTTP/2 error \(rawValue)"
        }
    }
}

/// An input a stream state machine does not allow in its current state.
///
/// The HTTP/2 layer below already rejects most of these as protocol errors, so seeing one means the connection
/// code drove the machine wrongly, or a peer found a gap; either way the stream is ended, never trusted.
package struct StreamStateError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The input that was refused, e.g. "message bytes".
    package let input: String
    /// The state that refused it, e.g. "closed".
    package let state: String

    package init(input: String, state: String) {
        self.input = input
        self.state = state
    }

    package var description: String { "\(input) is not allowed on a stream that is \(state)" }
}

/// A complete HTTP response for a request that is not gRPC: status, content-type and a short text body.
package struct PlainHTTPResponse: Hashable, Sendable {
    package var status: Int
    package var headers: [String: String]
    package var body: String

    package init(status: Int, headers: [String: String] = [:], body: String) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The header block: `:status`, `content-type`, `content-length`, then `headers` in name order.
    package var headerFields: [HeaderField] {
        var fields: [HeaderField] = [
            (":status", String(status)), ("content-type", "text/plain; charset=utf-8"),
            ("content-length", String(body.utf8.count)),
        ]
        for name in headers.keys.sorted() { fields.append((name, headers[name] ?? "")) }
        return fields
    }
}
