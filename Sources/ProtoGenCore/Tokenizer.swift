/// A lexical token of the protobuf language.
struct Token: Hashable, Sendable {
    enum Kind: Hashable, Sendable {
        case identifier
        case integer
        case float
        case string
        case symbol
        case end
    }

    var kind: Kind
    /// The token's text; for strings, the decoded value without quotes.
    var text: String
    var location: SourceLocation
    /// The comment directly above this token (`//` lines or a `/* */` block), if any.
    var leadingComment: String?
}

/// Splits `.proto` source into tokens, tracking line and column and keeping leading comments for doc comments.
struct Tokenizer {
    private let bytes: [UInt8]
    private let file: String
    private var index = 0
    private var line = 1
    private var column = 1
    /// The line of the last token, so that a comment trailing it is not taken for the next token's doc comment.
    private var lastTokenLine = 0

    init(source: String, file: String) {
        self.bytes = Array(source.utf8)
        self.file = file
    }

    private var location: SourceLocation { SourceLocation(file: file, line: line, column: column) }

    private func peek(_ offset: Int = 0) -> UInt8? {
        let i = index + offset
        return i < bytes.count ? bytes[i] : nil
    }

    private mutating func advance() {
        if bytes[index] == UInt8(ascii: "\n") {
            line += 1
            column = 1
        } else {
            column += 1
        }
        index += 1
    }

    static func isIdentStart(_ c: UInt8) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || c == UInt8(ascii: "_")
    }

    static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

    static func isIdentPart(_ c: UInt8) -> Bool { isIdentStart(c) || isDigit(c) }

    /// Tokenizes the whole file.
    mutating func tokenize() throws(ProtoGenError) -> [Token] {
        var tokens: [Token] = []
        while true {
            let comment = try skipWhitespaceAndComments()
            guard let c = peek() else {
                tokens.append(Token(kind: .end, text: "", location: location, leadingComment: nil))
                return tokens
            }
            let start = location
            var token: Token
            if Self.isIdentStart(c) {
                let begin = index
                while let d = peek(), Self.isIdentPart(d) { advance() }
                token = Token(kind: .identifier, text: text(begin, index), location: start)
            } else if Self.isDigit(c) || (c == UInt8(ascii: ".") && peek(1).map(Self.isDigit) == true) {
                token = try number(start)
            } else if c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") {
                token = try string(start)
            } else {
                advance()
                token = Token(kind: .symbol, text: String(UnicodeScalar(c)), location: start)
            }
            token.leadingComment = comment
            lastTokenLine = line
            tokens.append(token)
        }
    }

    private func text(_ from: Int, _ to: Int) -> String {
        String(decoding: bytes[from..<to], as: UTF8.self)
    }

    /// Skips blanks and comments; returns the comment block that ends on the line before the next token.
    private mutating func skipWhitespaceAndComments() throws(ProtoGenError) -> String? {
        var comment: [String] = []
        var lastCommentLine = -1
        while let c = peek() {
            if c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") || c == UInt8(ascii: "\r") || c == UInt8(ascii: "\n") {
                // A blank line detaches the comment above from the next declaration.
                if c == UInt8(ascii: "\n"), lastCommentLine >= 0, line > lastCommentLine {
                    comment = []
                    lastCommentLine = -1
                }
                advance()
            } else if c == UInt8(ascii: "/"), peek(1) == UInt8(ascii: "/") {
                advance()
                advance()
                let begin = index
                while let d = peek(), d != UInt8(ascii: "\n") { advance() }
                var body = text(begin, index)
                if body.hasPrefix(" ") { body.removeFirst() }
                if line != lastTokenLine {
                    comment.append(body)
                    lastCommentLine = line
                }
                if peek() == UInt8(ascii: "\n") { advance() }
            } else if c == UInt8(ascii: "/"), peek(1) == UInt8(ascii: "*") {
                let start = location
                advance()
                advance()
                let begin = index
                while true {
                    guard let d = peek() else {
                        throw ProtoGenError([Diagnostic("unterminated block comment", at: start)])
                    }
                    if d == UInt8(ascii: "*"), peek(1) == UInt8(ascii: "/") { break }
                    advance()
                }
                let body = text(begin, index)
                advance()
                advance()
                comment = body.split(separator: "\n", omittingEmptySubsequences: false).map { line in
                    var s = line.drop { $0 == " " || $0 == "\t" }
                    if s.hasPrefix("*") {
                        s = s.dropFirst()
                        if s.hasPrefix(" ") { s = s.dropFirst() }
                    }
                    return String(s)
                }
                while comment.first?.isEmpty == true { comment.removeFirst() }
                while comment.last?.isEmpty == true { comment.removeLast() }
                lastCommentLine = line
            } else {
                break
            }
        }
        return comment.isEmpty ? nil : comment.joined(separator: "\n")
    }

    private mutating func number(_ start: SourceLocation) throws(ProtoGenError) -> Token {
        let begin = index
        var isFloat = false
        if peek() == UInt8(ascii: "0"), let x = peek(1), x == UInt8(ascii: "x") || x == UInt8(ascii: "X") {
            advance()
            advance()
            while let d = peek(), Self.isIdentPart(d) { advance() }
            return Token(kind: .integer, text: text(begin, index), location: start)
        }
        while let d = peek() {
            if Self.isDigit(d) {
                advance()
            } else if d == UInt8(ascii: ".") {
                isFloat = true
                advance()
            } else if d == UInt8(ascii: "e") || d == UInt8(ascii: "E") {
                isFloat = true
                advance()
                if let s = peek(), s == UInt8(ascii: "+") || s == UInt8(ascii: "-") { advance() }
            } else if Self.isIdentStart(d) {
                throw ProtoGenError([Diagnostic("invalid number '\(text(begin, index + 1))'", at: start)])
            } else {
                break
            }
        }
        return Token(kind: isFloat ? .float : .integer, text: text(begin, index), location: start)
    }

    private mutating func string(_ start: SourceLocation) throws(ProtoGenError) -> Token {
        let quote = bytes[index]
        advance()
        var value: [UInt8] = []
        while true {
            guard let c = peek(), c != UInt8(ascii: "\n") else {
                throw ProtoGenError([Diagnostic("unterminated string literal", at: start)])
            }
            advance()
            if c == quote { break }
            if c != UInt8(ascii: "\\") {
                value.append(c)
                continue
            }
            guard let e = peek() else { throw ProtoGenError([Diagnostic("unterminated string literal", at: start)]) }
            advance()
            switch e {
            case UInt8(ascii: "n"): value.append(0x0A)
            case UInt8(ascii: "r"): value.append(0x0D)
            case UInt8(ascii: "t"): value.append(0x09)
            case UInt8(ascii: "a"): value.append(0x07)
            case UInt8(ascii: "b"): value.append(0x08)
            case UInt8(ascii: "f"): value.append(0x0C)
            case UInt8(ascii: "v"): value.append(0x0B)
            case UInt8(ascii: "x"), UInt8(ascii: "X"):
                var v: UInt8 = 0
                var n = 0
                while n < 2, let h = peek(), let digit = Self.hexValue(h) {
                    v = v &* 16 &+ digit
                    advance()
                    n += 1
                }
                guard n > 0 else { throw ProtoGenError([Diagnostic("invalid \\x escape", at: start)]) }
                value.append(v)
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                var v = Int(e - 0x30)
                var n = 1
                while n < 3, let o = peek(), o >= 0x30, o <= 0x37 {
                    v = v * 8 + Int(o - 0x30)
                    advance()
                    n += 1
                }
                value.append(UInt8(truncatingIfNeeded: v))
            default: value.append(e)
            }
        }
        return Token(kind: .string, text: String(decoding: value, as: UTF8.self), location: start)
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
        }
    }
}
