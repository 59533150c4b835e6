/// An error that ends an RPC: a gRPC status code and a human-readable message.
///
/// Servers throw it (or a domain error that converts to it) to end a call with a status; clients receive it when a
/// call ends with any status but OK. On the wire it becomes the `grpc-status` and `grpc-message` trailers.
public struct RPCError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A gRPC status code, as the gRPC specification numbers them. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The number sent in `grpc-status`.
        public let rawValue: Int

        private init(_ rawValue: Int) { self.rawValue = rawValue }

        /// The code for a `grpc-status` value, or `nil` for one outside the specification (0 is OK, not an error).
        public init?(rawValue: Int) {
            guard (1...16).contains(rawValue) else { return nil }
            self.rawValue = rawValue
        }

        /// The operation was cancelled, typically by the caller.
        public static let cancelled = Code(1)
        /// An error with no better code, or one from a peer that sent no status.
        public static let unknown = Code(2)
        /// The client sent an argument that is invalid whatever the system's state.
        public static let invalidArgument = Code(3)
        /// The deadline passed before the operation completed.
        public static let deadlineExceeded = Code(4)
        /// A requested entity was not found.
        public static let notFound = Code(5)
        /// An entity the client tried to create already exists.
        public static let alreadyExists = Code(6)
        /// The caller may not do this.
        public static let permissionDenied = Code(7)
        /// A resource ran out: a quota, or a message larger than the receiver accepts.
        public static let resourceExhausted = Code(8)
        /// The system is not in a state that allows the operation.
        public static let failedPrecondition = Code(9)
        /// The operation was aborted, typically by a concurrency conflict.
        public static let aborted = Code(10)
        /// The operation went past a valid range.
        public static let outOfRange = Code(11)
        /// The method is not implemented or not known.
        public static let unimplemented = Code(12)
        /// An invariant the system relies on is broken (a malformed message, for instance).
        public static let `internal` = Code(13)
        /// The service is unavailable for now; retrying may succeed.
        public static let unavailable = Code(14)
        /// Unrecoverable data loss or corruption.
        public static let dataLoss = Code(15)
        /// The request has no valid authentication credentials.
        public static let unauthenticated = Code(16)

        public var description: String {
            switch rawValue {
            case 1: "cancelled"
            case 2: "unknown"
            case 3: "invalid argument"
            case 4: "deadline exceeded"
            case 5: "not found"
            case 6: "already exists"
            case 7: "permission denied"
            case 8: "resource exhausted"
            case 9: "failed precondition"
            case 10: "aborted"
            case 11: "out of range"
            case 12: "unimplemented"
            case 13: "internal"
            case 14: "unavailable"
            case 15: "data loss"
            default: "unauthenticated"
            }
        }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What happened, for people (sent percent-encoded as `grpc-message`).
    public var message: String

    /// Trailing metadata sent with the status (or received with it).
    public var metadata: Metadata

    public init(code: Code, message: String, metadata: Metadata = Metadata()) {
        self.code = code
        self.message = message
        self.metadata = metadata
    }

    public var description: String { "\(code): \(message)" }
}

/// A domain error that knows which gRPC status it is. A service's own errors conform where the service meets the
/// wire (its service type's file), so that its rules and stores throw their own errors, free of RPC types, and a
/// handler that throws one ends the call with that status: the mapping is written once.
public protocol RPCStatusConvertible: Error {
    var rpcError: RPCError { get }
}
