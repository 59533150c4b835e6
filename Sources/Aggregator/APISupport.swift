internal import Foundation
package import HTTPTypes
package import Hummingbird
internal import Logging
internal import Metrics
internal import NIOCore
internal import RequestContext
internal import ServiceContextModule
internal import ServiceRuntime
internal import ShoalRPC
internal import Synchronization
internal import W3CTraceContext

/// An error answered in DigitalOcean's error body: `{"id": ..., "message": ..., "request_id": ...}`.
package struct APIError: Error, Sendable {
    package var status: HTTPResponse.Status
    package var id: String
    package var message: String
    package var headers: HTTPFields = [:]

    static let notFound = APIError(
        status: .notFound, id: "not_found", message: "The resource you requested could not be found.")
    static let unauthorized = APIError(
        status: .unauthorized, id: "unauthorized", message: "Unable to authenticate you.")
    static let badBody = APIError(status: .badRequest, id: "bad_request", message: "error parsing request body")
    static let serverError = APIError(
        status: .internalServerError, id: "server_error", message: "Server was unable to give you a response.")

    static func unprocessable(_ message: String) -> APIError {
        APIError(status: .unprocessableContent, id: "unprocessable_entity", message: message)
    }

    /// What an internal RPC failure means to the customer.
    static func from(_ error: any Error) -> APIError {
        if let error = error as? APIError { return error }
        if let error = error as? HTTPError {
            // The router's own answers: no such route (404), a body too large, ...
            return error.status == .notFound
                ? .notFound
                : APIError(status: error.status, id: "bad_request", message: error.body ?? error.status.reasonPhrase)
        }
        guard let error = error as? RPCError else { return .serverError }
        switch error.code {
        case .notFound: return .notFound
        case .failedPrecondition, .invalidArgument, .alreadyExists, .outOfRange: return .unprocessable(error.message)
        case .resourceExhausted: return .unprocessable(error.message.isEmpty ? "no capacity left" : error.message)
        default: return .serverError
        }
    }
}

/// The request's context: who is calling (set by the auth middleware) and the request id.
package struct APIContext: RequestContext {
    package var coreContext: CoreRequestContextStorage
    package var customer = ""
    package var requestId = ""

    package init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }
}

/// Per-token request budgets, as DigitalOcean counts them: a number per hour and a burst per minute.
package final class RateLimiter: Sendable {
    package struct Limits: Sendable {
        package var perHour: Int
        package var perMinute: Int

        package init(perHour: Int = 5000, perMinute: Int = 250) {
            self.perHour = perHour
            self.perMinute = perMinute
        }
    }

    private struct Budget {
        var hourStart: Double
        var hourCount: Int
        var minuteStart: Double
        var minuteCount: Int
    }

    private let defaults: Limits
    private let overrides: [String: Limits]
    private let budgets = Mutex<[String: Budget]>([:])

    package init(defaults: Limits, overrides: [String: Limits] = [:]) {
        self.defaults = defaults
        self.overrides = overrides
    }

    /// Counts a request of `token`: the headers to send, and whether it is over budget (with seconds to wait).
    func admit(_ token: String, now: Double = Date().timeIntervalSince1970) -> (headers: HTTPFields, retryAfter: Int?) {
        let limits = overrides[token] ?? defaults
        let (budget, retryAfter) = budgets.withLock { budgets -> (Budget, Int?) in
            var budget = budgets[token] ?? Budget(hourStart: now, hourCount: 0, minuteStart: now, minuteCount: 0)
            if now - budget.hourStart >= 3600 {
                budget.hourStart = now
                budget.hourCount = 0
            }
            if now - budget.minuteStart >= 60 {
                budget.minuteStart = now
                budget.minuteCount = 0
            }
            var retryAfter: Int?
            if budget.hourCount >= limits.perHour {
                retryAfter = max(1, Int((budget.hourStart + 3600 - now).rounded(.up)))
            } else if budget.minuteCount >= limits.perMinute {
                retryAfter = max(1, Int((budget.minuteStart + 60 - now).rounded(.up)))
            } else {
                budget.hourCount += 1
                budget.minuteCount += 1
            }
            budgets[token] = budget
            return (budget, retryAfter)
        }
        var headers = HTTPFields()
        headers[HTTPField.Name("ratelimit-limit")!] = String(limits.perHour)
        headers[HTTPField.Name("ratelimit-remaining")!] = String(max(0, limits.perHour - budget.hourCount))
        headers[HTTPField.Name("ratelimit-reset")!] = String(Int(budget.hourStart + 3600))
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        return (headers, retryAfter)
    }
}

/// Authenticates, counts the request against its token's budget, stamps a request id on the response and turns
/// every error into DigitalOcean's error body.
///
/// The edge of every request: it runs in a `ServiceContext` holding its request id and trace (the caller's
/// `traceparent`, continued, or a new trace), which every RPC it makes carries on; it ends with one log line
/// (method, route, status, duration, request id, trace id) and its RED metrics by route template:
/// `api_requests_total{method,route,status}` and `api_request_duration_seconds{method,route}`.
struct APIMiddleware: RouterMiddleware {
    typealias Context = APIContext
    let tokens: [String: String]
    let limiter: RateLimiter
    /// The share of new traces whose spans are recorded (0...1).
    let traceSampleRatio: Double
    let logger = Logger(label: "api")

    func handle(
        _ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response
    ) async throws -> Response {
        let started = ContinuousClock.now
        var context = context
        context.requestId = RequestID.next()
        var serviceContext = ServiceContext.current ?? .topLevel
        serviceContext.requestID = context.requestId
        let parent = request.headers[HTTPField.Name(ShoalContext.traceParentHeader)!].flatMap {
            try? TraceContext(traceParentHeaderValue: $0)
        }
        // A new trace is sampled (its spans recorded, if tracing is on) at the configured ratio; a caller's decides.
        let trace = ShoalContext.child(
            of: parent, sampled: traceSampleRatio >= 1 || Double.random(in: 0..<1) < traceSampleRatio)
        serviceContext.trace = trace
        let startedWall = Spans.now
        return try await ServiceContext.withValue(serviceContext) {
            let response = try await respond(request, context: context, next: next)
            // The route as the router matched it (`/v2/droplets/{id}`), not the raw path: bounded, and what an
            // operator groups by. Unmatched paths share one value.
            let route = context.endpointPath ?? "unmatched"
            let method = request.method.rawValue
            let status = String(response.status.code)
            let elapsed = ContinuousClock.now - started
            Counter(
                label: "api_requests_total", dimensions: [("method", method), ("route", route), ("status", status)]
            ).increment()
            let (seconds, attoseconds) = elapsed.components
            Metrics.Timer(label: "api_request_duration_seconds", dimensions: [("method", method), ("route", route)])
                .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
            logger.info(
                "request",
                metadata: [
                    "method": .string(method), "route": .string(route), "status": .string(status),
                    "duration_ms": .string(ServiceRuntime.milliseconds(elapsed)),
                ])
            if Spans.isRecording, trace.flags.contains(.sampled) {
                Spans.record(
                    FinishedSpan(
                        trace: trace, parentSpanID: parent?.spanID, name: "\(method) \(route)", kind: .server,
                        start: startedWall, end: Spans.now,
                        attributes: [
                            "http.request.method": method, "http.route": route, "http.response.status_code": status,
                        ],
                        error: response.status.code >= 500 ? status : nil
                    ))
            }
            return response
        }
    }

    private func respond(
        _ request: Request, context: APIContext, next: (Request, APIContext) async throws -> Response
    ) async throws -> Response {
        var context = context
        var extra = HTTPFields()
        extra[HTTPField.Name("x-request-id")!] = context.requestId
        let response: Response
        do {
            let authorization = request.headers[.authorization] ?? ""
            let parts = authorization.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "bearer", let customer = tokens[String(parts[1])] else {
                throw APIError.unauthorized
            }
            let (headers, retryAfter) = limiter.admit(String(parts[1]))
            extra.append(contentsOf: headers)
            if retryAfter != nil {
                throw APIError(status: .tooManyRequests, id: "too_many_requests", message: "API rate limit exceeded.")
            }
            context.customer = customer
            response = try await next(request, context)
        } catch {
            let answer = APIError.from(error)
            if answer.status.code >= 500 {
                // The customer sees a request id; the operator sees what went wrong under it (the line carries the id).
                logger.error(
                    "request failed",
                    metadata: [
                        "method": .string(request.method.rawValue), "path": .string(request.uri.path),
                        "error": .string("\(error)"),
                    ])
            }
            response = Self.errorResponse(answer, requestId: context.requestId)
        }
        var final = response
        final.headers.append(contentsOf: extra)
        return final
    }

    static func errorResponse(_ error: APIError, requestId: String) -> Response {
        var response = API.json(
            .object([
                ("id", .string(error.id)), ("message", .string(error.message)), ("request_id", .string(requestId)),
            ]), status: error.status
        )
        response.headers.append(contentsOf: error.headers)
        return response
    }
}
