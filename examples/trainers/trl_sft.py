"""Supervised fine-tuning with TRL's SFTTrainer on a file from `afs generate`.

Reads chatml, openai, sharegpt, completion or text files. Run by afs as, e.g.:

    afs retrain --train-cmd 'python examples/trainers/trl_sft.py --model Qwen/Qwen2.5-0.5B-Instruct'

(the dataset, model directory and result paths come from AFS_DATA_PATH, AFS_OUTPUT_DIR and
AFS_RESULT_PATH). `--check-data` only loads and checks the dataset. Conversational files
need a model with a chat template.
"""

import afs_data


def main():
    args = afs_data.arguments("sft", __doc__.splitlines()[0])
    if args.check_data:
        afs_data.check_data(args)
        return
    train_dataset, _, _ = afs_data.load(args.data, "sft")

    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        report_to=[],
        save_strategy="no",
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
    )
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=train_dataset)
    result = trainer.train()
    trainer.save_model(args.output_dir)
    trainer.processing_class.save_pretrained(args.output_dir)
    afs_data.report(args, result)


if __name__ == "__main__":
    main()
