public import ShoalRPC

/// `grpc.testing.TestService` as gRPC's interoperability test descriptions specify the server side: payloads of
/// the requested sizes, the requested statuses, metadata echoed back, streams paced as asked.
public struct InteropTestService: Grpc_Testing_TestService.ServiceProtocol {
    public init() {}

    static let echoInitial = "x-grpc-test-echo-initial"
    static let echoTrailing = "x-grpc-test-echo-trailing-bin"

    /// Echoes the interop metadata keys: the initial one as response metadata, the trailing one as trailers.
    private static func echoMetadata(_ context: ServerContext) {
        if let initial = context.metadata[echoInitial] {
            context.setResponseMetadata([echoInitial: initial])
        }
        if let trailing = context.metadata[binary: echoTrailing] {
            var metadata = Metadata()
            metadata.add(echoTrailing, binary: trailing)
            context.setTrailingMetadata(metadata)
        }
    }

    private static func payload(size: Int32) throws -> Grpc_Testing_Payload {
        guard size >= 0 else { throw RPCError(code: .invalidArgument, message: "negative response size \(size)") }
        return Grpc_Testing_Payload(type: .compressable, body: [UInt8](repeating: 0, count: Int(size)))
    }

    private static func check(_ status: Grpc_Testing_EchoStatus?) throws {
        guard let status, status.code != 0 else { return }
        throw RPCError(code: RPCError.Code(rawValue: Int(status.code)) ?? .unknown, message: status.message)
    }

    public func emptyCall(request: Grpc_Testing_Empty, context: ServerContext) async throws -> Grpc_Testing_Empty {
        Self.echoMetadata(context)
        return Grpc_Testing_Empty()
    }

    public func unaryCall(
        request: Grpc_Testing_SimpleRequest, context: ServerContext
    ) async throws -> Grpc_Testing_SimpleResponse {
        Self.echoMetadata(context)
        try Self.check(request.responseStatus)
        return Grpc_Testing_SimpleResponse(payload: try Self.payload(size: request.responseSize))
    }

    public func cacheableUnaryCall(
        request: Grpc_Testing_SimpleRequest, context: ServerContext
    ) async throws -> Grpc_Testing_SimpleResponse {
        try await unaryCall(request: request, context: context)
    }

    private static func respond(
        to request: Grpc_Testing_StreamingOutputCallRequest,
        with response: RPCResponseWriter<Grpc_Testing_StreamingOutputCallResponse>
    ) async throws {
        for parameters in request.responseParameters {
            if parameters.intervalUs > 0 { try await Task.sleep(for: .microseconds(Int(parameters.intervalUs))) }
            try await response.write(
                Grpc_Testing_StreamingOutputCallResponse(payload: try payload(size: parameters.size)))
        }
    }

    public func streamingOutputCall(
        request: Grpc_Testing_StreamingOutputCallRequest,
        response: RPCResponseWriter<Grpc_Testing_StreamingOutputCallResponse>,
        context: ServerContext
    ) async throws {
        Self.echoMetadata(context)
        try await Self.respond(to: request, with: response)
        try Self.check(request.responseStatus)
    }

    public func streamingInputCall(
        requests: RPCRequestStream<Grpc_Testing_StreamingInputCallRequest>,
        context: ServerContext
    ) async throws -> Grpc_Testing_StreamingInputCallResponse {
        Self.echoMetadata(context)
        var total = 0
        for try await request in requests { total += request.payload?.body.count ?? 0 }
        return Grpc_Testing_StreamingInputCallResponse(aggregatedPayloadSize: Int32(clamping: total))
    }

    public func fullDuplexCall(
        requests: RPCRequestStream<Grpc_Testing_StreamingOutputCallRequest>,
        response: RPCResponseWriter<Grpc_Testing_StreamingOutputCallResponse>,
        context: ServerContext
    ) async throws {
        Self.echoMetadata(context)
        for try await request in requests {
            try Self.check(request.responseStatus)
            try await Self.respond(to: request, with: response)
        }
    }

    public func halfDuplexCall(
        requests: RPCRequestStream<Grpc_Testing_StreamingOutputCallRequest>,
        response: RPCResponseWriter<Grpc_Testing_StreamingOutputCallResponse>,
        context: ServerContext
    ) async throws {
        Self.echoMetadata(context)
        var buffered: [Grpc_Testing_StreamingOutputCallRequest] = []
        for try await request in requests { buffered.append(request) }
        for request in buffered {
            try Self.check(request.responseStatus)
            try await Self.respond(to: request, with: response)
        }
    }

    public func unimplementedCall(
        request: Grpc_Testing_Empty, context: ServerContext
    ) async throws -> Grpc_Testing_Empty {
        throw RPCError(
            code: .unimplemented,
            message: "grpc.testing.TestService/UnimplementedCall is not implemented, as the interop tests expect")
    }
}
