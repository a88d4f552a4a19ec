"""Vocabularies: register (idempotent: the id is a content hash), list by pages, look up, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from lsmseg.prompt_cache import Vocabulary
from lsmseg.service.routes.common import error_responses, protected_router
from lsmseg.service.schemas import PromptSources, VocabCreate, VocabList, VocabOut, VocabSummary
from lsmseg.service.state import get_state

router = protected_router("vocabularies")
MAX_PAGE = 1000


def _vocab_out(vocab: Vocabulary, sources: dict[str, int]) -> VocabOut:
    return VocabOut(
        vocab_id=vocab.vocab_id,
        name=vocab.name,
        classes=list(vocab.classes),
        num_classes=len(vocab.classes),
        prompt_version=vocab.prompt_version,
        created=vocab.created,
        prompt_sources=PromptSources(**sources),
    )


@router.post(
    "/vocab",
    operation_id="createVocab",
    status_code=201,
    response_model=VocabOut,
    summary="Register a named or anonymous class list",
    description="Idempotent: the id is a hash of the normalised classes (and descriptions), so the same list "
    "always gets the same id. A list registered without a name may be given one later; a second name, "
    "or a name of a built-in vocabulary, is refused with 409.",
    responses=error_responses(400, 408, 409, 413, 415, 422, 503),
)
async def create_vocab(request: Request, body: VocabCreate) -> VocabOut:
    state = get_state(request)
    vocab, prompts = await run_in_threadpool(
        state.vocabularies.register, body.classes, body.name, body.descriptions
    )
    return _vocab_out(vocab, prompts.counts)


@router.get(
    "/vocab",
    operation_id="listVocabs",
    response_model=VocabList,
    summary="Built-in vocabularies, then registered ones by age, a page at a time",
    responses=error_responses(422),
)
async def list_vocabs(
    request: Request,
    offset: Annotated[int, Query(ge=0, description="position of the first vocabulary to list")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="vocabularies per page")] = 100,
) -> VocabList:
    vocabularies = get_state(request).vocabularies
    vocabs, total = await run_in_threadpool(vocabularies.page, offset, limit)
    following = offset + len(vocabs)
    return VocabList(
        vocabularies=[
            VocabSummary(
                vocab_id=vocab.vocab_id,
                name=vocab.name,
                num_classes=len(vocab.classes),
                created=vocab.created,
                builtin=vocab is vocabularies.builtins.get(vocab.name or ""),
            )
            for vocab in vocabs
        ],
        total=total,
        next_offset=following if vocabs and following < total else None,
    )


@router.get(
    "/vocab/{id_or_name}",
    operation_id="getVocab",
    response_model=VocabOut,
    summary="One vocabulary by id or name",
    responses=error_responses(404, 422, 503),
)
async def get_vocab(request: Request, id_or_name: str) -> VocabOut:
    state = get_state(request)
    vocab, prompts = await run_in_threadpool(state.vocabularies.describe, id_or_name)
    return _vocab_out(vocab, prompts.counts)


@router.delete(
    "/vocab/{id_or_name}",
    operation_id="deleteVocab",
    status_code=204,
    summary="Forget a vocabulary (cached embeddings stay)",
    responses=error_responses(404, 409, 422),
)
async def delete_vocab(request: Request, id_or_name: str) -> Response:
    await run_in_threadpool(get_state(request).vocabularies.delete, id_or_name)
    return Response(status_code=204)
