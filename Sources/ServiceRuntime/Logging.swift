package import ArgumentParser
internal import Foundation
package import Logging
internal import RequestContext
internal import Synchronization

#if canImport(Glibc)
    internal import Glibc
#endif

/// How log lines are written: `logfmt` (`key=value`, for people and grep) or `json` (one object per line, for log
/// pipelines).
package enum LogFormat: String, CaseIterable, ExpressibleByArgument, Sendable {
    case logfmt, json
}

/// A `--log-level` value: swift-log's levels, by their names.
package enum LogLevel: String, CaseIterable, ExpressibleByArgument, Sendable {
    case trace, debug, info, notice, warning, error, critical

    package var level: Logger.Level { Logger.Level(rawValue: rawValue) ?? .info }
}

/// One structured line per message on standard error: time (UTC, milliseconds), level, service, message, then the
/// logger's metadata and the task's (its request id and trace id, from ``ShoalContext``). A line is written with one
/// `write(2)`, so lines of concurrent tasks never interleave.
package struct ShoalLogHandler: LogHandler {
    package var logLevel: Logger.Level
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?
    let service: String
    let label: String
    let format: LogFormat
    /// Where lines go (standard error; a test captures them).
    let sink: @Sendable (String) -> Void

    package init(
        label: String, service: String, level: Logger.Level, format: LogFormat,
        metadataProvider: Logger.MetadataProvider? = ShoalContext.loggingMetadata,
        sink: @escaping @Sendable (String) -> Void = ShoalLogHandler.standardError
    ) {
        self.label = label
        self.service = service
        self.logLevel = level
        self.format = format
        self.metadataProvider = metadataProvider
        self.sink = sink
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { current, _ in current } }
        if let explicit = event.metadata { fields.merge(explicit) { _, new in new } }
        sink(
            Self.line(
                time: Date(), level: event.level, service: service, label: label, message: "\(event.message)",
                fields: fields, format: format
            ))
    }

    /// One line, without its newline.
    static func line(
        time: Date, level: Logger.Level, service: String, label: String, message: String, fields: Logger.Metadata,
        format: LogFormat
    ) -> String {
        var pairs: [(String, String)] = [("time", timestamp(time)), ("level", level.rawValue), ("service", service)]
        if label != service { pairs.append(("logger", label)) }
        pairs.append(("msg", message))
        for key in fields.keys.sorted() { pairs.append((key, flatten(fields[key] ?? ""))) }
        switch format {
        case .logfmt:
            return pairs.map { "\($0.0)=\(logfmtValue($0.1))" }.joined(separator: " ")
        case .json:
            return "{" + pairs.map { "\(jsonString($0.0)):\(jsonString($0.1))" }.joined(separator: ",") + "}"
        }
    }

    static func flatten(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): text
        case .stringConvertible(let value): value.description
        case .array(let values): "[" + values.map(flatten).joined(separator: ",") + "]"
        case .dictionary(let values):
            "{" + values.keys.sorted().map { "\($0)=\(flatten(values[$0] ?? ""))" }.joined(separator: ",") + "}"
        }
    }

    /// A logfmt value: bare when it is a plain word, else quoted as ``quoted(_:)`` quotes it (logfmt readers take
    /// JSON's escapes).
    static func logfmtValue(_ text: String) -> String {
        let plain =
            !text.isEmpty
            && text.unicodeScalars.allSatisfy {
                $0.value > 0x20 && $0 != "\"" && $0 != "=" && $0 != "\\" && $0.value != 0x7F
            }
        return plain ? text : quoted(text)
    }

    /// A JSON string literal (RFC 8259): quotes, backslashes and control characters escaped.
    static func jsonString(_ text: String) -> String { quoted(text) }

    /// `text` in double quotes, with quotes, backslashes and control characters escaped as JSON escapes them.
    static func quoted(_ text: String) -> String {
        var quoted = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": quoted += "\\\""
            case "\\": quoted += "\\\\"
            case "\n": quoted += "\\n"
            case "\r": quoted += "\\r"
            case "\t": quoted += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                quoted += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: quoted.unicodeScalars.append(scalar)
            }
        }
        return quoted + "\""
    }

    /// RFC 3339 in UTC with milliseconds, as log pipelines parse it.
    static func timestamp(_ date: Date) -> String {
        let millis = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var seconds = time_t(millis / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let fraction = String(millis % 1000)
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))."
            + String(repeating: "0", count: 3 - fraction.count) + fraction + "Z"
    }

    package static let standardError: @Sendable (String) -> Void = { line in
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}

/// The command-line options of logging, every service's.
package struct LoggingOptions: ParsableArguments {
    @Option(
        help:
            "The least severe level logged: trace, debug, info, notice, warning, error or critical. At debug, every RPC served is a line."
    )
    package var logLevel: LogLevel = .info
    @Option(help: "How log lines are written: logfmt or json.")
    package var logFormat: LogFormat = .logfmt

    package init() {}
}

extension ServiceRuntime {
    private static let loggingBootstrapped = Mutex(false)

    /// Makes every `Logger` of this process write ``ShoalLogHandler`` lines for `service` (once per process; later
    /// calls do nothing). Call it before the first logger is made: one made earlier keeps swift-log's default.
    package static func bootstrapLogging(service: String, _ options: LoggingOptions) {
        let first = loggingBootstrapped.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        let (level, format) = (options.logLevel.level, options.logFormat)
        LoggingSystem.bootstrap(
            { label, provider in
                ShoalLogHandler(
                    label: label, service: service, level: level, format: format, metadataProvider: provider)
            },
            metadataProvider: ShoalContext.loggingMetadata
        )
    }
}
