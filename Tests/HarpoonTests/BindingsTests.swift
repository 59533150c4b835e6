import Foundation
import GRDB
import SQLiteSupport
import Testing

@Suite("statements bound through SQLite's C API")
struct BindingsTests {
    @Test("every kind of value reads back as GRDB binds it, and a statement moves between both ways of binding")
    func roundTrip() throws {
        let queue = try DatabaseQueue()
        try queue.write { db in
            try db.execute(sql: "CREATE TABLE t (i INTEGER, d REAL, s TEXT, n TEXT, b BLOB)")
            let insert = try db.cachedStatement(sql: "INSERT INTO t (i, d, s, n, b) VALUES (?, ?, ?, ?, ?)")
            let rows: [(Int64, Double, String, String?, [UInt8])] = [
                (-42, 1.5, "héllo, 世界", nil, [0, 1, 255]),
                (Int64.max, -0.25, "", "not null", []),
            ]
            for row in rows {
                try insert.execute {
                    $0.bind(1, row.0)
                    $0.bind(2, row.1)
                    $0.bind(3, row.2)
                    $0.bind(4, row.3)
                    $0.bind(5, row.4)
                }
                // The same statement through GRDB's arguments, then through bindings again: neither leaks into the other.
                try insert.execute(arguments: [row.0, row.1, row.2, row.3, Data(row.4)])
            }
            let read = try Row.fetchAll(
                db, sql: "SELECT i, d, s, n, b, typeof(s), typeof(b), typeof(n) FROM t ORDER BY rowid")
            #expect(read.count == 4)
            for (index, row) in read.enumerated() {
                let expected = rows[index / 2]
                #expect(row[0] as Int64 == expected.0)
                #expect(row[1] as Double == expected.1)
                #expect(row[2] as String == expected.2)
                #expect(row[3] as String? == expected.3)
                #expect([UInt8](row[4] as Data? ?? Data()) == expected.4)
                #expect(row[5] as String == "text")  // an empty text is text, not NULL
                #expect(row[7] as String == (expected.3 == nil ? "null" : "text"))
                if index % 2 == 0 { #expect(row[6] as String == "blob") }  // an empty blob too, bound here
            }
        }
    }
}
