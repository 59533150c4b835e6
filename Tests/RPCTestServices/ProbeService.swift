public import ShoalRPC

/// The test implementation of `rpctest.v1.Probe`: echoes, counts, sums, and fails or waits on request.
public struct ProbeService: Rpctest_V1_Probe.ServiceProtocol {
    /// Called with the context of every call, for tests that watch handlers (cancellation, deadlines).
    public let observer: (@Sendable (Event) -> Void)?

    public enum Event: Sendable {
        case started(String)
        case cancelled(String)
        case finished(String)
    }

    public init(observer: (@Sendable (Event) -> Void)? = nil) {
        self.observer = observer
    }

    private func prepare(_ request: Rpctest_V1_ProbeRequest, _ context: ServerContext) async throws {
        observer?(.started(context.descriptor.method))
        if request.delayMs > 0 {
            do {
                try await Task.sleep(for: .milliseconds(Int(request.delayMs)))
            } catch {
                observer?(.cancelled(context.descriptor.method))
                throw error
            }
        }
        if request.failCode != 0 {
            context.setTrailingMetadata(["failure-reason": "requested"])
            throw RPCError(
                code: RPCError.Code(rawValue: Int(request.failCode)) ?? .unknown,
                message: "failing as asked: \(request.text)")
        }
    }

    private static func seen(_ context: ServerContext) -> [String] {
        context.metadata.map { entry in
            switch entry.value {
            case .string(let text): "\(entry.key)=\(text)"
            case .binary(let bytes): "\(entry.key)=\(bytes.map(String.init).joined(separator: ","))"
            }
        }
    }

    public func echo(request: Rpctest_V1_ProbeRequest, context: ServerContext) async throws -> Rpctest_V1_ProbeResponse
    {
        try await prepare(request, context)
        var echoed = Metadata()
        if let value = context.metadata["echo-me"] { echoed.add("echoed", value) }
        if let bytes = context.metadata[binary: "echo-me-bin"] { echoed.add("echoed-bin", binary: bytes) }
        context.setResponseMetadata(echoed)
        defer { observer?(.finished(context.descriptor.method)) }
        return Rpctest_V1_ProbeResponse(
            text: request.text, number: request.number, payload: request.payload, metadata: Self.seen(context))
    }

    public func expand(
        request: Rpctest_V1_ProbeRequest, response: RPCResponseWriter<Rpctest_V1_ProbeResponse>, context: ServerContext
    ) async throws {
        try await prepare(request, context)
        do {
            for index in 0..<Int(request.count) {
                try await response.write(
                    Rpctest_V1_ProbeResponse(text: request.text, number: Int64(index), payload: request.payload))
            }
        } catch {
            observer?(.cancelled(context.descriptor.method))
            throw error
        }
        observer?(.finished(context.descriptor.method))
    }

    public func collect(
        requests: RPCRequestStream<Rpctest_V1_ProbeRequest>, context: ServerContext
    ) async throws -> Rpctest_V1_ProbeResponse {
        observer?(.started(context.descriptor.method))
        var sum: Int64 = 0
        var count: Int64 = 0
        do {
            for try await request in requests {
                if request.failCode != 0 {
                    throw RPCError(
                        code: RPCError.Code(rawValue: Int(request.failCode)) ?? .unknown, message: "failing as asked")
                }
                if request.delayMs > 0 { try await Task.sleep(for: .milliseconds(Int(request.delayMs))) }
                sum += request.number
                count += 1
            }
        } catch {
            observer?(.cancelled(context.descriptor.method))
            throw error
        }
        observer?(.finished(context.descriptor.method))
        return Rpctest_V1_ProbeResponse(text: "\(count) requests", number: sum)
    }

    public func converse(
        requests: RPCRequestStream<Rpctest_V1_ProbeRequest>, response: RPCResponseWriter<Rpctest_V1_ProbeResponse>,
        context: ServerContext
    ) async throws {
        observer?(.started(context.descriptor.method))
        do {
            for try await request in requests {
                if request.failCode != 0 {
                    throw RPCError(
                        code: RPCError.Code(rawValue: Int(request.failCode)) ?? .unknown, message: "failing as asked")
                }
                try await response.write(
                    Rpctest_V1_ProbeResponse(text: request.text.uppercased(), number: request.number * 2))
            }
        } catch {
            observer?(.cancelled(context.descriptor.method))
            throw error
        }
        observer?(.finished(context.descriptor.method))
    }
}
