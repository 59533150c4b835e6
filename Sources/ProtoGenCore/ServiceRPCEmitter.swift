/// For each `service`: a server protocol with one `async` method per RPC (`<Service>.ServiceProtocol`), its routing
/// table built from the implementation, and a client with one method per RPC (`<Service>.Client`). The generated
/// code uses `ShoalRPC`.
public struct ServiceRPCEmitter: SwiftEmitter {
    public init() {}

    public func emit(_ file: FileIR, context: GenerationContext, into writer: inout CodeWriter) {
        let access = context.access
        for service in file.services {
            let namespace = context.swiftServiceName(service, in: file)
            let methods = service.methods.map { Method($0, namespace: namespace, context: context) }
            writer.line()
            writer.block("extension \(namespace)") { w in
                w.line("/// Implement this to serve `\(service.fullName)`; hand the implementation to an `RPCServer`.")
                w.block("\(access)protocol ServiceProtocol: RPCService") { w in
                    for (index, method) in methods.enumerated() {
                        if index > 0 { w.line() }
                        w.lines(SwiftNaming.docComment(method.ir.comment))
                        w.line(
                            "func \(method.swiftName)(\(method.serverParameters)) async throws\(method.serverResult)")
                    }
                }
                w.line()
                w.line("/// Calls `\(service.fullName)` through an `RPCClient`.")
                w.block("\(access)struct Client: Sendable") { w in
                    w.line("\(access)let client: RPCClient")
                    w.line()
                    w.line("\(access)init(_ client: RPCClient) { self.client = client }")
                    for method in methods {
                        w.line()
                        w.lines(SwiftNaming.docComment(method.ir.comment))
                        emitClientMethod(method, access: access, into: &w)
                    }
                }
            }
            writer.line()
            writer.block("extension \(namespace).ServiceProtocol") { w in
                w.line("/// Routes each method of `\(service.fullName)` to this implementation.")
                w.block("\(access)var methods: [RPCServerMethod]") { w in
                    w.line("[")
                    for method in methods {
                        w.line("    \(method.serverRoute),")
                    }
                    w.line("]")
                }
            }
        }
    }

    private func emitClientMethod(_ method: Method, access: String, into w: inout CodeWriter) {
        let descriptor = "\(method.namespace).Method.\(SwiftNaming.escaped(method.ir.name)).descriptor"
        let common = "metadata: Metadata = Metadata(), options: CallOptions? = nil"
        let handler = "handler: @escaping @Sendable (RPCResponseStream<\(method.output)>) async throws -> Result"
        let requests = "requests: @escaping @Sendable (RPCRequestWriter<\(method.input)>) async throws -> Void"
        switch (method.ir.clientStreaming, method.ir.serverStreaming) {
        case (false, false):
            w.block(
                "\(access)func \(method.swiftName)(_ request: \(method.input), \(common)) async throws -> \(method.output)"
            ) { w in
                w.line("try await client.unary(\(descriptor), request: request, metadata: metadata, options: options)")
            }
        case (false, true):
            w.block(
                "\(access)func \(method.swiftName)<Result: Sendable>(_ request: \(method.input), \(common), \(handler)) async throws -> Result"
            ) { w in
                w.line(
                    "try await client.serverStreaming(\(descriptor), request: request, metadata: metadata, options: options, handler: handler)"
                )
            }
        case (true, false):
            w.block("\(access)func \(method.swiftName)(\(common), \(requests)) async throws -> \(method.output)") { w in
                w.line(
                    "try await client.clientStreaming(\(descriptor), metadata: metadata, options: options, requests: requests)"
                )
            }
        case (true, true):
            w.block(
                "\(access)func \(method.swiftName)<Result: Sendable>(\(common), \(requests), \(handler)) async throws -> Result"
            ) { w in
                w.line(
                    "try await client.bidirectionalStreaming(\(descriptor), metadata: metadata, options: options, requests: requests, handler: handler)"
                )
            }
        }
    }

    private struct Method {
        let ir: MethodIR
        let namespace: String
        let swiftName: String
        let input: String
        let output: String

        init(_ ir: MethodIR, namespace: String, context: GenerationContext) {
            self.ir = ir
            self.namespace = namespace
            self.swiftName = SwiftNaming.escaped(SwiftNaming.lowerCamel(ir.name))
            self.input = context.swiftName(ir.inputType)
            self.output = context.swiftName(ir.outputType)
        }

        var serverParameters: String {
            switch (ir.clientStreaming, ir.serverStreaming) {
            case (false, false): "request: \(input), context: ServerContext"
            case (false, true): "request: \(input), response: RPCResponseWriter<\(output)>, context: ServerContext"
            case (true, false): "requests: RPCRequestStream<\(input)>, context: ServerContext"
            case (true, true):
                "requests: RPCRequestStream<\(input)>, response: RPCResponseWriter<\(output)>, context: ServerContext"
            }
        }

        var serverResult: String { ir.serverStreaming ? "" : " -> \(output)" }

        var serverRoute: String {
            let descriptor = "\(namespace).Method.\(SwiftNaming.escaped(ir.name)).descriptor"
            return switch (ir.clientStreaming, ir.serverStreaming) {
            case (false, false): ".unary(\(descriptor)) { try await self.\(swiftName)(request: $0, context: $1) }"
            case (false, true):
                ".serverStreaming(\(descriptor)) { try await self.\(swiftName)(request: $0, response: $1, context: $2) }"
            case (true, false):
                ".clientStreaming(\(descriptor)) { try await self.\(swiftName)(requests: $0, context: $1) }"
            case (true, true):
                ".bidirectionalStreaming(\(descriptor)) { try await self.\(swiftName)(requests: $0, response: $1, context: $2) }"
            }
        }
    }
}
