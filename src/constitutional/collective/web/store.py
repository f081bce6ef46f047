"""The web app's database: SQLAlchemy 2 models and the few queries the pages need.

SQLite by default, PostgreSQL by URL (`postgresql+psycopg://user@host/db`); tables are created on
start. One vote per participant per statement is a UNIQUE constraint, and a re-vote is an upsert
(`INSERT ... ON CONFLICT DO UPDATE`, which both SQLite and PostgreSQL have), so two racing
requests can never leave two rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import secrets
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from constitutional.collective.votes import Votes, spreadsheet_safe
from constitutional.errors import UserError

MAX_TOPIC = 200  # characters
MAX_STATEMENT = 280  # characters, a little more than Polis's 140
VOTE_VALUES = {"agree": 1, "disagree": -1, "pass": 0}
MAX_ID = 2**63 - 1  # ids are 64-bit in the database; a larger one in a URL names nothing (404)


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Server-wide values that must survive a restart, such as the secret that signs cookies."""

    __tablename__ = "collective_settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Conversation(Base):
    __tablename__ = "collective_conversations"
    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(MAX_TOPIC))
    description: Mapped[str] = mapped_column(Text, default="")
    is_open: Mapped[bool] = mapped_column(default=True)
    seed: Mapped[int] = mapped_column(default=0)  # orders each participant's statements
    created: Mapped[datetime] = mapped_column(default=_now)


class Participant(Base):
    __tablename__ = "collective_participants"
    id: Mapped[int] = mapped_column(primary_key=True)  # exported as p<id>; the token never leaves
    token: Mapped[str] = mapped_column(String(64), unique=True)  # the cookie (or invite link) value
    invited: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(default=_now)


class Statement(Base):
    __tablename__ = "collective_statements"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'accepted', 'rejected')", name="status_known"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("collective_conversations.id"), index=True
    )
    text: Mapped[str] = mapped_column(String(MAX_STATEMENT))
    status: Mapped[str] = mapped_column(String(10), default="pending")
    author_id: Mapped[int | None] = mapped_column(
        ForeignKey("collective_participants.id")
    )  # None: seed
    created: Mapped[datetime] = mapped_column(default=_now)


class Vote(Base):
    __tablename__ = "collective_votes"
    __table_args__ = (
        UniqueConstraint("participant_id", "statement_id", name="one_vote_each"),
        CheckConstraint("value IN (-1, 0, 1)", name="vote_value"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("collective_participants.id"))
    statement_id: Mapped[int] = mapped_column(ForeignKey("collective_statements.id"), index=True)
    value: Mapped[int]
    updated: Mapped[datetime] = mapped_column(default=_now)


def database_url(text: str) -> str:
    """A SQLAlchemy URL as given, or a plain file path as a SQLite URL."""
    return text if "://" in text else f"sqlite:///{text}"


def open_engine(url: str) -> Engine:
    """Connect, create missing tables; any failure is a `UserError` naming the URL (password hidden)."""
    try:
        parsed = make_url(database_url(url))
    except ArgumentError as e:
        raise UserError(f"--db: not a database URL: {url!r} ({e})") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UserError(f"--db: only sqlite and postgresql are supported, got {shown}")
    try:
        engine = create_engine(parsed, pool_pre_ping=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(engine)
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise UserError(f"--db {shown}: driver not installed ({e})") from None
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UserError(f"--db {shown}: cannot open the database: {reason}") from None
    return engine


def _sqlite_pragmas(connection, _record) -> None:
    # WAL lets the results page read while votes are written; SQLite ignores foreign keys unless asked.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _insert(session: Session):
    """The dialect's own INSERT, which has `on_conflict_do_update` / `on_conflict_do_nothing`."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def order_key(seed: int, token: str, statement_id: int) -> str:
    """A participant's fixed, seeded place for a statement: stable as statements are added."""
    return hashlib.sha256(f"{seed}:{token}:{statement_id}".encode()).hexdigest()


class Store:
    """Queries over one database; every method opens and commits its own session."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.session = sessionmaker(engine, expire_on_commit=False)

    def secret(self) -> bytes:
        """The server secret: 256 random bits made on first use and kept, so restarts keep cookies valid."""
        with self.session.begin() as s:
            s.execute(
                _insert(s)(Setting)
                .values(name="secret", value=secrets.token_hex(32))
                .on_conflict_do_nothing(index_elements=["name"])
            )  # two servers starting at once agree
            return bytes.fromhex(
                s.scalars(select(Setting.value).where(Setting.name == "secret")).one()
            )

    # --- conversations and statements -------------------------------------------------------
    def create_conversation(self, topic: str, description: str, seeds: list[str], seed: int) -> int:
        with self.session.begin() as s:
            conversation = Conversation(topic=topic, description=description, seed=seed)
            s.add(conversation)
            s.flush()
            s.add_all(
                Statement(conversation_id=conversation.id, text=t, status="accepted") for t in seeds
            )
            return conversation.id

    def conversation(self, cid: int) -> Conversation | None:
        if not 1 <= cid <= MAX_ID:
            return None
        with self.session() as s:
            return s.get(Conversation, cid)

    def conversations(self) -> list[Conversation]:
        with self.session() as s:
            return list(s.scalars(select(Conversation).order_by(Conversation.id)))

    def set_open(self, cid: int, is_open: bool) -> None:
        with self.session.begin() as s:
            conversation = s.get(Conversation, cid)
            if conversation is not None:
                conversation.is_open = is_open

    def add_statement(self, cid: int, token: str, text: str) -> int:
        """A participant's statement, pending moderation."""
        with self.session.begin() as s:
            statement = Statement(
                conversation_id=cid, text=text, author_id=self._participant(s, token)
            )
            s.add(statement)
            s.flush()
            return statement.id

    def statements(self, cid: int, status: str | None = None) -> list[tuple[Statement, int]]:
        """(statement, number of votes) in id order, optionally only those with `status`."""
        with self.session() as s:
            query = (
                select(Statement, func.count(Vote.id))
                .outerjoin(Vote, Vote.statement_id == Statement.id)
                .where(Statement.conversation_id == cid)
                .group_by(Statement.id)
                .order_by(Statement.id)
            )
            if status is not None:
                query = query.where(Statement.status == status)
            return [(st, n) for st, n in s.execute(query)]

    def moderate(self, sid: int, accept: bool) -> int | None:
        """Accept or reject a statement; returns its conversation id (None if there is no such statement)."""
        if not 1 <= sid <= MAX_ID:
            return None
        with self.session.begin() as s:
            statement = s.get(Statement, sid)
            if statement is None:
                return None
            statement.status = "accepted" if accept else "rejected"
            return statement.conversation_id

    # --- participants and votes -------------------------------------------------------------
    def _participant(self, s: Session, token: str, invited: bool = False) -> int:
        """The id of the participant with `token`, created if new (race-free: ON CONFLICT DO NOTHING)."""
        insert = _insert(s)
        s.execute(
            insert(Participant)
            .values(token=token, invited=invited, created=_now())
            .on_conflict_do_nothing(index_elements=["token"])
        )
        return s.scalars(select(Participant.id).where(Participant.token == token)).one()

    def invite(self, tokens: list[str]) -> None:
        with self.session.begin() as s:
            for token in tokens:
                self._participant(s, token, invited=True)

    def invited(self, token: str) -> bool:
        with self.session() as s:
            return bool(s.scalar(select(Participant.invited).where(Participant.token == token)))

    def known(self, token: str) -> bool:
        """Whether this participant has voted, submitted or been invited before."""
        with self.session() as s:
            return s.scalar(select(Participant.id).where(Participant.token == token)) is not None

    def vote(self, token: str, sid: int, value: int) -> None:
        """Record (or replace) this participant's vote on statement `sid`."""
        with self.session.begin() as s:
            pid = self._participant(s, token)
            insert = _insert(s)
            s.execute(
                insert(Vote)
                .values(participant_id=pid, statement_id=sid, value=value, updated=_now())
                .on_conflict_do_update(
                    index_elements=["participant_id", "statement_id"],
                    set_={"value": value, "updated": _now()},
                )
            )

    def next_statement(self, cid: int, token: str | None) -> tuple[Statement | None, int, int]:
        """(the next accepted statement this participant has not voted on, votes cast, accepted total)."""
        conversation = self.conversation(cid)
        accepted = [st for st, _ in self.statements(cid, "accepted")]
        with self.session() as s:
            voted = (
                set(
                    s.scalars(
                        select(Vote.statement_id)
                        .join(Participant)
                        .where(Participant.token == token)
                    )
                )
                if token
                else set()
            )
        left = [st for st in accepted if st.id not in voted]
        seed = conversation.seed if conversation else 0
        left.sort(key=lambda st: order_key(seed, token or "", st.id))
        return (left[0] if left else None), len(accepted) - len(left), len(accepted)

    @staticmethod
    def _counted(query, cid: int, invited_only: bool):
        """`query` over votes narrowed to those that count: on accepted statements of `cid`, and
        in invite-only mode cast by invited participants."""
        query = query.join(Statement, Vote.statement_id == Statement.id).where(
            Statement.conversation_id == cid, Statement.status == "accepted"
        )
        if invited_only:
            query = query.join(Participant, Vote.participant_id == Participant.id).where(
                Participant.invited
            )
        return query

    def vote_rows(self, cid: int, invited_only: bool = False) -> list[tuple[int, int, int]]:
        """(participant id, statement id, vote) of the votes that count, oldest first."""
        with self.session() as s:
            query = self._counted(
                select(Vote.participant_id, Vote.statement_id, Vote.value), cid, invited_only
            )
            return [tuple(row) for row in s.execute(query.order_by(Vote.updated, Vote.id))]

    def votes_version(self, cid: int, invited_only: bool = False) -> tuple:
        """Changes whenever the votes that count change: a vote, a re-vote (its time), a statement
        accepted or rejected (the statement ids). Cheap next to the analysis it keys."""
        with self.session() as s:
            query = select(func.count(Vote.id), func.max(Vote.updated), func.sum(Vote.statement_id))
            return tuple(s.execute(self._counted(query, cid, invited_only)).one())

    def origins(self, cid: int) -> dict[str, int]:
        """How many participants who voted here came by invite and how many anonymously."""
        with self.session() as s:
            query = self._counted(
                select(Participant.invited, func.count(func.distinct(Participant.id))).join(
                    Vote, Vote.participant_id == Participant.id
                ),
                cid,
                False,
            )
            counts = dict(s.execute(query.group_by(Participant.invited)).all())
        return {"invited": counts.get(True, 0), "anonymous": counts.get(False, 0)}

    # --- export -----------------------------------------------------------------------------
    # Every cell goes through `spreadsheet_safe`: an organiser opens these files in a spreadsheet,
    # where a statement starting with = or @ would run as a formula. `load_votes` undoes it.
    def export_votes(self, cid: int, invited_only: bool = False) -> str:
        """votes.csv in the layout `cai collective analyze` reads: participant,statement,vote."""
        rows = ((f"p{pid}", sid, value) for pid, sid, value in self.vote_rows(cid, invited_only))
        return _csv(["participant", "statement", "vote"], rows)

    def export_comments(self, cid: int) -> str:
        """comments.csv: statement,text of every accepted statement."""
        return _csv(
            ["statement", "text"], ((st.id, st.text) for st, _ in self.statements(cid, "accepted"))
        )

    def votes(self, cid: int, invited_only: bool = False) -> Votes:
        """The same matrix `load_votes` builds from the export (voted statements only, in id order)."""
        rows = self.vote_rows(cid, invited_only)
        participants = list(dict.fromkeys(f"p{pid}" for pid, _, _ in rows))
        statement_ids = sorted({sid for _, sid, _ in rows})
        row_of = {p: i for i, p in enumerate(participants)}
        col_of = {sid: j for j, sid in enumerate(statement_ids)}
        matrix = np.full((len(participants), len(statement_ids)), np.nan)
        for pid, sid, value in rows:
            matrix[row_of[f"p{pid}"], col_of[sid]] = value
        texts = {str(st.id): st.text for st, _ in self.statements(cid, "accepted")}
        return Votes(participants, [str(sid) for sid in statement_ids], matrix, texts)


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    # CRLF, as RFC 4180 has it: the csv module then quotes any cell holding a \r or \n, which it
    # would leave bare (and so break the row) with a plain \n terminator.
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return buf.getvalue()
