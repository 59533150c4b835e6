/// Message compression (`grpc-encoding`): identity and gzip.
public enum MessageEncoding: String, Sendable, Hashable, CaseIterable {
    case identity
    case gzip

    /// What Shoal accepts, as sent in `grpc-accept-encoding`.
    package static let acceptHeader = "gzip,identity"

    /// Parses a `grpc-encoding` value; `nil` for an encoding Shoal does not implement.
    package init?(header: String) {
        var view = Substring(header)
        while view.first == " " { view.removeFirst() }
        while view.last == " " { view.removeLast() }
        self.init(rawValue: String(view))
    }
}
