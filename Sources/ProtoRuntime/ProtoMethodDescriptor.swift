/// Describes one RPC method of a protobuf `service`: its full path and streaming kind.
///
/// Generated service namespaces expose one per method as `Method.<Name>.descriptor`; transports route on
/// ``path``.
public struct ProtoMethodDescriptor: Hashable, Sendable, CustomStringConvertible {
    /// Whether each side of the call sends one message or a stream.
    public enum Kind: Hashable, Sendable {
        /// One request, one response.
        case unary
        /// A stream of requests, one response.
        case clientStreaming
        /// One request, a stream of responses.
        case serverStreaming
        /// Streams both ways.
        case bidirectionalStreaming
    }

    /// The fully-qualified service name, e.g. `harpoon.v1.EventService`.
    public let service: String
    /// The method name, e.g. `CreateEvent`.
    public let method: String
    /// Streaming kind.
    public let kind: Kind
    /// Fully-qualified protobuf name of the request message.
    public let inputType: String
    /// Fully-qualified protobuf name of the response message.
    public let outputType: String

    public init(service: String, method: String, kind: Kind, inputType: String, outputType: String) {
        self.service = service
        self.method = method
        self.kind = kind
        self.inputType = inputType
        self.outputType = outputType
    }

    /// The HTTP/2 `:path` of the method: `/package.Service/Method`.
    public var path: String { "/\(service)/\(method)" }

    public var description: String { path }
}

/// Describes a protobuf `service`: its name and its methods.
public struct ProtoServiceDescriptor: Hashable, Sendable {
    /// The fully-qualified service name.
    public let fullName: String
    /// The methods, in declaration order.
    public let methods: [ProtoMethodDescriptor]

    public init(fullName: String, methods: [ProtoMethodDescriptor]) {
        self.fullName = fullName
        self.methods = methods
    }
}
